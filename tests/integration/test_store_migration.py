"""A schema-1 store (every reading its full JSON message) converted in place to the compact
schema 2, killed half-way and resumed: no reading lost or doubled, ``seq`` untouched, every
message the same text as before, ``schema_version`` 2 only at the end (issue 16 item 10).

The schema-1 store is written by ``bench.store_size.write_v1_store`` (the old table, index
and ``amr.reading.v1`` texts); the conversion runs as ``python -m gateway.storemigrate``,
a real process that gets SIGKILL while it is between its batches' commits.
"""

from __future__ import annotations

import asyncio
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

from bench.store_size import readings, write_v1_store
from gateway.model import PointValue, Reading, to_json
from gateway.settings import StoreSettings
from gateway.store import Store
from gateway.storecodec import PAYLOAD_SQL, register
from tests.servicefixtures import wait_until

ROOT = Path(__file__).resolve().parents[2]
GW = "gw-migrate"


def _old_store(path: Path, count: int) -> list[str]:
    """A schema-1 store: ``count`` CT-meter readings, a failed read, a reading in a layout the
    codec does not know (kept verbatim), a settlement and a sink cursor."""
    rows = list(readings(40, count, ct_meter=True))
    failed = {n: PointValue(None, None, "kWh", "timeout", None) for n in ("energy_import_kwh", "power_kw")}
    rows.append(Reading(meter="m0001", customer="c", bus="b", schedule="realtime", slot=rows[-1].slot + 60,
                        ts=rows[-1].slot + 60.5, points=failed, quality="timeout", error="no reply"))
    payloads = write_v1_store(path, GW, iter(rows))
    conn = sqlite3.connect(path, isolation_level=None)
    odd = f'{{"seq":{len(payloads) + 1},"schema":"amr.reading.v1","meter":"m0002","points":{{}}}}'
    conn.execute("INSERT INTO outbox(seq, kind, meter, schedule, retention, slot, ts, quality, payload) "
                 "VALUES (?, 'reading', 'm0002', 'interval', 'interval', 0, 0, 'good', ?)", (len(payloads) + 1, odd))
    settlement = to_json({"schema": "amr.settlement.v1", "gateway": GW, "seq": len(payloads) + 2, "meter": "m0001"})
    conn.execute("INSERT INTO outbox(seq, kind, meter, retention, ts, payload) "
                 "VALUES (?, 'settlement', 'm0001', 'keep', 1, ?)", (len(payloads) + 2, settlement))
    conn.execute("INSERT INTO sink_cursor VALUES ('mqtt', 5)")
    conn.close()
    return [*payloads, odd, settlement]


def _meta(path: Path, key: str) -> str | None:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
    try:
        row = conn.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
    finally:
        conn.close()
    return None if row is None else str(row[0])


def _migrate(path: Path, *extra: str, out: int = subprocess.PIPE) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "gateway.storemigrate", str(path), *extra], cwd=ROOT,
                            stdout=out, stderr=out)


def test_migration_killed_half_way_resumes_and_loses_nothing(tmp_path: Path) -> None:
    db = tmp_path / "store.db"
    want = _old_store(db, 12_000)
    size_before = db.stat().st_size

    proc = _migrate(db, "--batch", "25", out=subprocess.DEVNULL)
    try:
        wait_until(lambda: int(_meta(db, "migrate_seq") or 0) >= 1000, 60, "the migration to commit some batches",
                   step=0.01)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    mark = int(_meta(db, "migrate_seq") or 0)
    assert 1000 <= mark < len(want) - 2, "killed half-way, not before or after"
    assert _meta(db, "schema_version") == "1"
    with sqlite3.connect(db) as conn:
        converted = conn.execute("SELECT count(*) FROM outbox WHERE shape IS NOT NULL").fetchone()[0]
        assert converted == mark                 # everything up to the mark, nothing after it
        assert conn.execute("SELECT count(*) FROM outbox").fetchone()[0] == len(want)

    done = _migrate(db)
    _, err = done.communicate(timeout=120)
    assert done.returncode == 0, err.decode()
    assert _meta(db, "schema_version") == "2" and _meta(db, "migrate_seq") is None

    conn = register(sqlite3.connect(db))
    try:
        got = conn.execute(f"SELECT seq, {PAYLOAD_SQL} FROM outbox ORDER BY seq").fetchall()
        assert [s for s, _ in got] == list(range(1, len(want) + 1))
        assert [p for _, p in got] == want       # byte for byte, the odd one kept verbatim
        shapes = conn.execute("SELECT count(*) FROM outbox WHERE shape IS NOT NULL").fetchone()[0]
        assert shapes == len(want) - 2           # all readings but the unknown layout
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert conn.execute("SELECT acked_seq FROM sink_cursor WHERE sink='mqtt'").fetchone()[0] == 5
    finally:
        conn.close()
    assert db.stat().st_size < size_before / 4   # the freed pages went back to the filesystem


def test_the_gateway_converts_an_old_store_when_it_opens_it(tmp_path: Path) -> None:
    db = tmp_path / "store.db"
    want = _old_store(db, 300)

    async def run() -> None:
        store = await Store.open(db, StoreSettings(), GW)
        try:
            rows = await store.pending("new-sink", 10_000)
            assert [r.payload for r in rows] == want
            seq = (await store.append_readings(list(readings(1, 1, ct_meter=False))))[0]
            assert seq == len(want) + 1          # seq goes on after the old high-water mark
            (row,) = await store.pending("new-sink", 10, after=seq - 1)
            assert f'"seq":{seq},' in row.payload and row.payload.startswith('{"schema":"amr.reading.v1"')
        finally:
            await store.close()

    asyncio.run(run())
    assert _meta(db, "schema_version") == "2"
