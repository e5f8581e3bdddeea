"""``amr-gateway sink drop NAME``: the one way to let a sink's undelivered rows go, run as a
user runs it (a real process on a real store), audited, and refused while the store is open."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from gateway.audit import AUDIT_FILE, verify
from gateway.runtime import STORE_FILE
from gateway.settings import StoreSettings
from gateway.store import Store
from tests.servicefixtures import make_reading, run_sink_drop, sink_drop_site

pytestmark = pytest.mark.integration

SETTINGS = StoreSettings(synchronous="NORMAL", commit_interval_s=0.01, retention_interval_days=1)


def write_config(tmp: Path) -> Path:
    """A site whose configuration names one sink, MQTT, disabled."""
    return sink_drop_site(tmp / "site.yaml", "drop-test", tmp / "data",
                          "mqtt: {host: 127.0.0.1, port: 1883, enabled: false}")


async def test_sink_drop_discards_the_backlog_audited_and_only_with_the_store_to_itself(tmp_path: Path) -> None:
    cfg = write_config(tmp_path)
    db = tmp_path / "data" / STORE_FILE
    store = await Store.open(db, SETTINGS, "drop-test")
    store.declare_sinks([], ["mqtt"])
    for name, upto in (("mqtt", 0), ("old-sink", 0)):
        store.register_sink(name)
        await store.ack(name, upto)
    await store.append_readings([make_reading(ts=float(i)) for i in range(5)])
    await store.ack("mqtt", 2)

    busy = run_sink_drop(cfg, "mqtt")                      # the store is open here: refused, nothing changed
    assert busy.returncode == 1 and "stop the gateway first" in busy.stderr, busy.stderr
    await store.close()

    done = run_sink_drop(cfg, "mqtt")
    assert done.returncode == 0, done.stderr
    assert "3 undelivered messages discarded (cursor 2 -> 5)" in done.stdout
    forgotten = run_sink_drop(cfg, "old-sink")             # no longer configured: forgotten
    assert forgotten.returncode == 0 and "forgotten" in forgotten.stdout, forgotten.stderr
    unknown = run_sink_drop(cfg, "influxdb")
    assert unknown.returncode == 2 and "no sink 'influxdb'" in unknown.stderr, unknown.stderr

    conn = sqlite3.connect(db)
    try:
        assert conn.execute("SELECT sink, acked_seq FROM sink_cursor").fetchall() == [("mqtt", 5)]
        audit = [json.loads(d) for (d,) in conn.execute("SELECT detail FROM audit WHERE kind='sink_drop' ORDER BY id")]
    finally:
        conn.close()
    assert [(a["sink"], a["action"], a["from_seq"], a["to_seq"], a["discarded"]) for a in audit] == [
        ("mqtt", "advanced", 2, 5, 3), ("old-sink", "forgotten", 0, None, 5)]
    assert all(a["by"] for a in audit)
    chained = [json.loads(line) for line in (tmp_path / "data" / AUDIT_FILE).read_text().splitlines()]
    assert [(e["action"], e["subject"], e["before"], e["after"]) for e in chained] == [
        ("sink.drop", "mqtt", {"acked_seq": 2}, {"acked_seq": 5, "action": "advanced", "discarded": 3}),
        ("sink.drop", "old-sink", {"acked_seq": 0}, {"acked_seq": None, "action": "forgotten", "discarded": 5})]
    assert all(e["actor"].startswith("cli:") for e in chained)
    assert verify(tmp_path / "data" / AUDIT_FILE).intact

    store = await Store.open(db, SETTINGS, "drop-test")   # now retention may let the rows go
    try:
        store.declare_sinks([], ["mqtt"])
        assert await store.enforce_retention(now=30 * 86400.0) == 5
    finally:
        await store.close()
