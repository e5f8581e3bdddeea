"""The worklist on a real broker: an event acknowledged and closed through the API arrives on
MQTT as ``amr.event_state.v1`` on the meter's event topic, after the event itself, as an
independent subscriber on the session's mosquitto receives it."""

from __future__ import annotations

import uuid
from pathlib import Path

import aiohttp

from gateway.clock import ScaledClock
from gateway.config import load_settings_from_text
from gateway.demo import demo_config_text
from gateway.ports import free_port
from gateway.runtime import Gateway
from gateway.simulator.fleet import SimulatedFleet
from tests.servicefixtures import (  # noqa: F401  (fixtures)
    Broker,
    Subscriber,
    _mosquitto_fixture,
    await_until,
)

RATE = 120.0
START = 1_795_939_200.0 + 14 * 60 + 50         # 2026-11-29 16:14:50 +08:00
TOKEN = "worklist-mqtt-token"
DEAD = "c1002-main"


async def test_worklist_state_changes_arrive_on_mqtt(tmp_path: Path, mosquitto: Broker) -> None:
    gw_id = f"wl-{uuid.uuid4().hex[:8]}"
    text = demo_config_text(tmp_path, api_port=free_port(), mqtt=(mosquitto.host, mosquitto.port))
    text = text.replace("id: demo-gateway", f"id: {gw_id}", 1)
    settings = load_settings_from_text(text, "<test>", tmp_path, {"AMR_API_TOKEN": TOKEN})
    assert settings.gateway.id == gw_id and settings.mqtt is not None and settings.mqtt.enabled
    sub = Subscriber(mosquitto, f"amr/{gw_id}/meters/{DEAD}/event", f"sub-{gw_id}").start()
    clock = ScaledClock(START, RATE)
    fleet = SimulatedFleet(settings, clock, seed=7)
    await fleet.start()
    gw = Gateway(settings, clock)
    try:
        await gw.start()
        assert gw.review is not None and gw.api is not None
        engine = gw.review
        await fleet.stop_meter(DEAD)
        await await_until(lambda: ("read_failure", "") in engine.state(DEAD).active, 8 * 60 / RATE + 10,
                          "read_failure of the silent meter")
        raised = await await_until(
            lambda: sub.received(lambda ms: any(m.json().get("type") == "read_failure" for m in ms)), 30.0,
            "the read_failure event on MQTT", detail=sub.summary)
        event_id = next(m.json()["id"] for m in raised if m.json().get("type") == "read_failure")
        base = f"http://127.0.0.1:{gw.api.port}/api/v1/events/{event_id}"
        async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {TOKEN}"}) as http:
            async with http.post(f"{base}/ack", json={"note": "site called"}) as resp:
                assert resp.status == 200, await resp.text()
            async with http.post(f"{base}/close", json={"reason": "meter taken out of service"}) as resp:
                assert resp.status == 200, await resp.text()

        def states(ms: list) -> list[tuple[int, str]]:  # type: ignore[type-arg]
            return [(m.json()["id"], m.json()["worklist"]["state"]) for m in ms
                    if m.json().get("schema") == "amr.event_state.v1"]

        msgs = await await_until(lambda: sub.received(lambda ms: len(states(ms)) >= 2), 30.0,
                                 "both worklist changes on MQTT", detail=sub.summary)
    finally:
        await gw.stop()
        await fleet.stop()
        sub.stop()
    assert states(msgs) == [(event_id, "acknowledged"), (event_id, "closed")]
    changes = [m.json() for m in msgs if m.json().get("schema") == "amr.event_state.v1"]
    assert changes[0]["worklist"]["note"] == "site called" and changes[0]["customer"] == "C1002"
    assert changes[1]["worklist"]["reason"] == "meter taken out of service"
    assert all(m.topic == f"amr/{gw_id}/meters/{DEAD}/event" and m.qos == 1 for m in msgs)
