"""MQTT sink against the real mosquitto: topics, payload, QoS, order, cursor, status, auth, TLS."""

from __future__ import annotations

import asyncio
import subprocess
import uuid
from pathlib import Path

import pytest

from gateway.settings import MqttSettings, StoreSettings
from gateway.sinks.base import Backoff
from gateway.sinks.delivery import SinkRunner
from gateway.sinks.mqtt import MqttSink
from gateway.store import Store
from tests.servicefixtures import (  # noqa: F401  (fixtures)
    Broker,
    MosquittoProcess,
    MuteBroker,
    Subscriber,
    _mosquitto_fixture,
    await_until,
    commit,
    make_reading,
)

pytestmark = pytest.mark.integration

FAST = StoreSettings(synchronous="NORMAL", commit_interval_s=0.01)


def gateway_id() -> str:
    """A gateway id of its own per test, so tests sharing the broker never see each other."""
    return f"t-{uuid.uuid4().hex[:10]}"


async def open_store(tmp_path: Path, gw: str) -> Store:
    """A real store on disk."""
    return await Store.open(tmp_path / "amr.sqlite", FAST, gw)


def mqtt_settings(broker: Broker, **kw: object) -> MqttSettings:
    """Settings for a broker, with test-friendly overrides."""
    return MqttSettings(host=broker.host, port=broker.port, **kw)  # type: ignore[arg-type]


async def test_publishes_every_kind_on_its_topic_verbatim_qos1_in_order(tmp_path: Path, mosquitto: Broker) -> None:
    gw = gateway_id()
    store = await open_store(tmp_path, gw)
    sub = Subscriber(mosquitto, f"amr/{gw}/#", f"sub-{gw}").start()
    try:
        seqs = await commit(store, [make_reading("m1", kwh=str(100 + i)) for i in range(50)])
        seqs += await commit(store, [make_reading("m/2+x", failed_point=True)])
        s_seq = await store.append_message("settlement", "m1", 1.0e9, {"quality": "actual", "registers": {"a": 1}})
        e_seq = await store.append_message("event", "m1", 1.0e9, {"event": "meter_stopped"})
        k_seq = await store.append_message("kpi", None, 1.0e9, {"read_success_rate": 0.99})
        runner = SinkRunner(MqttSink(mqtt_settings(mosquitto), gw), store)
        await runner.start()
        assert await runner.wait_idle(30), runner.state()
        # 54 data messages: the live "online" status message (not retained, it was published
        # after the subscription) must not count towards them
        msgs = await await_until(lambda: sub.received(lambda m: len([x for x in m if not x.retain and
                                                                     x.topic != f"amr/{gw}/status"]) >= 54),
                                 30, "54 messages", detail=sub.summary)
        rows = {r.seq: r for r in await store.pending("check", 1000, after=0)}
        data = [m for m in msgs if m.topic != f"amr/{gw}/status"]
        assert [m.json()["seq"] for m in data] == sorted(rows)          # published in seq order
        for m in data:
            seq = m.json()["seq"]
            assert m.payload == rows[seq].payload.encode()                # verbatim
            assert m.qos == 1
        topics = {m.json()["seq"]: m.topic for m in data}
        assert topics[seqs[0]] == f"amr/{gw}/meters/m1/reading"
        assert topics[seqs[-1]] == f"amr/{gw}/meters/m_2_x/reading"        # reserved characters replaced
        assert topics[s_seq] == f"amr/{gw}/meters/m1/settlement"
        assert topics[e_seq] == f"amr/{gw}/meters/m1/event"
        assert topics[k_seq] == f"amr/{gw}/kpi"
        assert await store.cursor("mqtt") == store.last_seq
        st = runner.state()
        assert st["state"] == "connected" and st["backlog"] == 0 and st["published"] == 54
        status = [m for m in msgs if m.topic == f"amr/{gw}/status"]
        assert status and status[-1].payload == b"online"
        await runner.stop()
        await await_until(lambda: sub.received(lambda m: any(x.topic.endswith("/status") and x.payload == b"offline"
                                                             for x in m)),
                          10, "the offline status", detail=sub.summary)
        assert runner.state()["state"] == "stopped"
    finally:
        sub.stop()
        await store.close()
    # The retained status a late subscriber sees is "offline" after a graceful stop.
    late = Subscriber(mosquitto, f"amr/{gw}/status", f"late-{gw}").start()
    try:
        msgs = await await_until(lambda: late.received(bool), 10, "the retained status", detail=late.summary)
        assert msgs[0].retain and msgs[0].payload == b"offline"
    finally:
        late.client.publish(f"amr/{gw}/status", b"", qos=1, retain=True)   # clear the retained message
        late.stop()


async def test_live_readings_flow_while_running_and_cursor_follows(tmp_path: Path, mosquitto: Broker) -> None:
    gw = gateway_id()
    store = await open_store(tmp_path, gw)
    sub = Subscriber(mosquitto, f"amr/{gw}/meters/+/reading", f"sub-{gw}").start()
    runner = SinkRunner(MqttSink(mqtt_settings(mosquitto, inflight=5), gw), store)
    await runner.start()
    try:
        for batch in range(10):
            await commit(store, [make_reading(f"m{batch}", kwh=str(i)) for i in range(20)])
        assert await runner.wait_idle(30), runner.state()
        await await_until(lambda: len(sub.snapshot()) >= 200, 30, "200 readings", detail=sub.summary)
        assert sub.seqs() == list(range(1, 201))
        assert await store.cursor("mqtt") == 200
    finally:
        await runner.stop()
        sub.stop()
        await store.close()


async def test_cursor_moves_only_after_puback(tmp_path: Path) -> None:
    """A broker that takes the connection and then stops acknowledging: the cursor moves over
    what it acknowledged and nothing more.

    mosquitto always PUBACKs, so a tiny local TCP server plays the silent broker: it answers
    CONNECT with CONNACK, acknowledges the birth message and the first reading (the probe
    that opens the window), and then reads and ignores everything.
    """
    gw = gateway_id()
    store = await open_store(tmp_path, gw)
    seqs = await commit(store, [make_reading() for _ in range(10)])
    async with MuteBroker(acks=2) as broker:
        sink = MqttSink(MqttSettings(host="127.0.0.1", port=broker.port, inflight=4), gw)
        runner = SinkRunner(sink, store, drain_timeout_s=0.5)
        try:
            await runner.start()
            await asyncio.wait_for(broker.received.wait(), 10)
            await await_until(lambda: sink._conn is not None and len(sink._conn.mids) == 4, 10,
                              "a full window of unacknowledged publishes")
            conn = sink._conn
            assert conn is not None and sorted(conn.mids.values()) == seqs[1:5]
            assert runner.state()["published"] == 1
            assert runner.state()["cursor"] == seqs[0]
        finally:
            await runner.stop()
    assert await store.cursor("mqtt") == seqs[0]
    await store.close()


async def test_a_broker_that_stops_answering_pings_is_dropped_and_reconnected(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Keepalive is the loop's job (no paho thread): a broker that accepts the connection but
    never answers PINGREQ is given up after the keepalive and a fresh session is opened.

    mosquitto always answers pings, so a local TCP server plays the mute broker.
    """
    gw = gateway_id()
    store = await open_store(tmp_path, gw)
    async with MuteBroker() as broker:
        sink = MqttSink(MqttSettings(host="127.0.0.1", port=broker.port, keepalive_s=1), gw)
        runner = SinkRunner(sink, store, drain_timeout_s=0.5, backoff=Backoff(base=0.05, cap=0.2))
        try:
            with caplog.at_level("WARNING", logger="amr.sinks"):
                await runner.start()
                await await_until(lambda: broker.connections >= 2, 15, "a second session after the mute one")
            assert runner.sessions >= 1
            # the drop is reported when it happens (last_error clears once a session delivers again)
            assert any("lost the connection to the MQTT broker" in r.getMessage() for r in caplog.records)
        finally:
            await runner.stop()
            await store.close()


def password_file(path: Path, user: str, password: str) -> Path:
    """A mosquitto password file with one user."""
    path.write_text("")
    subprocess.run(["mosquitto_passwd", "-b", str(path), user, password], check=True, capture_output=True,
                   timeout=30)
    return path


async def test_auth_failure_is_reported_once_and_kept(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    work = tmp_path / "broker"
    work.mkdir()
    pwfile = password_file(work / "passwd", "amr", "right-password")
    broker = MosquittoProcess(work, extra_conf=f"allow_anonymous false\npassword_file {pwfile}\n")
    broker.conf.write_text(broker.conf.read_text().replace("allow_anonymous true\n", ""))
    broker.start()
    gw = gateway_id()
    store = await open_store(tmp_path, gw)
    await commit(store, [make_reading() for _ in range(5)])
    try:
        bad = SinkRunner(MqttSink(mqtt_settings(broker.broker, username="amr", password="wrong"), gw), store)
        with caplog.at_level("ERROR", logger="amr.sinks"):
            await bad.start()
            await await_until(lambda: bad.state()["state"] == "auth_failed", 20, "auth_failed")
            await bad.stop()
        assert await store.cursor("mqtt") == 0
        assert "refused" in (bad.state()["last_error"] or "")
        assert sum("refused our credentials" in r.getMessage() for r in caplog.records) == 1
        good = SinkRunner(MqttSink(mqtt_settings(broker.broker, username="amr", password="right-password"), gw),
                          store)
        await good.start()
        assert await good.wait_idle(30), good.state()
        await good.stop()
        assert await store.cursor("mqtt") == 5
    finally:
        await store.close()
        broker.stop()


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=60)


async def test_tls_with_ca_file_and_client_certificate(tmp_path: Path) -> None:
    work = tmp_path / "tls"
    work.mkdir()
    ca_key, ca_crt = work / "ca.key", work / "ca.crt"
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=amr-test-ca",
             "-keyout", str(ca_key), "-out", str(ca_crt))
    for name, cn in (("server", "localhost"), ("client", "amr-client")):
        _openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={cn}", "-keyout", str(work / f"{name}.key"),
                 "-out", str(work / f"{name}.csr"))
        ext = work / f"{name}.ext"
        ext.write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
        _openssl("x509", "-req", "-in", str(work / f"{name}.csr"), "-CA", str(ca_crt), "-CAkey", str(ca_key),
                 "-CAcreateserial", "-days", "2", "-extfile", str(ext), "-out", str(work / f"{name}.crt"))
    broker = MosquittoProcess(work / "broker", extra_conf=(
        f"cafile {ca_crt}\ncertfile {work / 'server.crt'}\nkeyfile {work / 'server.key'}\n"
        "require_certificate true\n"))
    broker.start()
    gw = gateway_id()
    store = await open_store(tmp_path, gw)
    await commit(store, [make_reading() for _ in range(5)])
    try:
        settings = mqtt_settings(broker.broker, tls=True, ca_file=str(ca_crt), cert_file=str(work / "client.crt"),
                                 key_file=str(work / "client.key"))
        runner = SinkRunner(MqttSink(settings, gw), store)
        await runner.start()
        assert await runner.wait_idle(30), runner.state()
        await runner.stop()
        assert await store.cursor("mqtt") == 5
        # Without the client certificate the broker refuses the handshake: kept, nothing acked.
        await commit(store, [make_reading()])
        no_cert = SinkRunner(MqttSink(mqtt_settings(broker.broker, tls=True, ca_file=str(ca_crt)), gw), store)
        await no_cert.start()
        await await_until(lambda: no_cert.state()["state"] == "disconnected", 20, "a refused TLS session")
        await no_cert.stop()
        assert await store.cursor("mqtt") == 5
    finally:
        await store.close()
        broker.stop()
