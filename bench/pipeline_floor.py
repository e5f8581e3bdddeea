"""A reference for the CPU target: a store and two sinks with nothing but their essential steps.

Issue 16 asks that the gateway with its store, MQTT and InfluxDB sinks cost ≤ 1.3× the bare
poll loop (``bench/fleet_baseline.py``) measured in the same run. This module asks "what
would a store and sinks cost with none of the gateway's machinery?" with code: it bolts onto
the bare loop (``fleet_baseline.py --floor``) a deliberately minimal pipeline, written the
plain way (no templates, no memos), that does the work the guarantees need and nothing else:

* each good read becomes a row: the values scaled and joined into one text (as compact as
  the gateway's own encoding), meter, schedule, slot, time, quality;
* a writer thread commits the rows every 20 ms (the gateway's group window) into the
  gateway's own outbox schema (WAL, ``synchronous=FULL``, 2 KiB pages, the
  ``(meter, kind, slot)`` index), one multi-row ``executemany`` and one COMMIT per round;
* after each commit, on the loop: every row's JSON message (``json.dumps`` in C, the
  gateway's message structure and size, ISO times) published at QoS 1 over MQTT 5 to the
  broker, with one socket write per commit; PUBACK reason codes parsed and counted;
* every row's InfluxDB line, posted once a second (``/api/v2/write``) by a thread.

Left out (each of them costs the gateway something): the review, sink cursors saved with
the commits, the in-memory tail and replays, retention, back-pressure, shapes, metrics,
settlements, every error path. It is not a proof that nothing cheaper exists (a cleverer
encoding could shave it), but a yardstick: the gateway's store and sinks set beside what the
plain version of the same steps costs, in the same sitting.

``bench/fleet_parts.py`` runs it as the variant ``floor`` beside ``bare`` and ``full``.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import sqlite3
import struct
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from gateway.sinks.mqtt import _remaining_length

GROUP_S = 0.02
INFLUX_EVERY_S = 1.0

_SCHEMA = """
PRAGMA page_size=2048;
PRAGMA journal_mode=WAL;
PRAGMA synchronous=FULL;
CREATE TABLE IF NOT EXISTS outbox (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, kind TEXT NOT NULL, meter TEXT, schedule TEXT,
    retention TEXT NOT NULL, slot REAL, ts REAL NOT NULL, quality TEXT, payload TEXT NOT NULL,
    shape INTEGER);
CREATE INDEX IF NOT EXISTS outbox_meter_kind_slot ON outbox(meter, kind, slot);
"""

REGISTERS: tuple[int, ...] = (10, 2, 3)
"""Registers of each request :meth:`FloorPipeline.take` reads its nine values from: the plan
``tcp_fleet.py`` compiles for its point set (five 32-bit energies, a 32-bit power, three voltages)."""

_POINTS = ("energy_import_kwh", "energy_import_kwh_t1", "energy_import_kwh_t2", "energy_import_kwh_t3",
           "energy_import_kwh_t4", "power_kw", "voltage_v_l1", "voltage_v_l2", "voltage_v_l3")
_UNITS = ("kWh",) * 5 + ("kW",) + ("V",) * 3


def _mqtt_str(s: str) -> bytes:
    b = s.encode()
    return struct.pack(">H", len(b)) + b


def mqtt_connect(client_id: str) -> bytes:
    """An MQTT 5 CONNECT with a clean start and no properties."""
    body = _mqtt_str("MQTT") + bytes([5, 0x02]) + struct.pack(">H", 60) + b"\x00" + _mqtt_str(client_id)
    return b"\x10" + _remaining_length(len(body)) + body


def mqtt_publish(topic: str, packet_id: int, payload: bytes) -> bytes:
    """An MQTT 5 PUBLISH at QoS 1 with no properties."""
    body = _mqtt_str(topic) + struct.pack(">H", packet_id) + b"\x00" + payload
    return b"\x32" + _remaining_length(len(body)) + body


class _Mqtt(asyncio.Protocol):
    """Reads CONNACK and PUBACKs; counts acknowledgements and refusals (reason ≥ 0x80)."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.acked = 0
        self.refused = 0
        self.connected = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        while len(buf) >= 2:
            length, shift, i = 0, 0, 1
            while True:
                if i >= len(buf):
                    return
                byte = buf[i]
                length |= (byte & 0x7F) << shift
                shift += 7
                i += 1
                if not byte & 0x80:
                    break
            if len(buf) < i + length:
                return
            kind = buf[0] >> 4
            if kind == 2 and not self.connected.done():
                self.connected.set_result(buf[i + 1] if length > 1 else 0)
            elif kind == 4:
                reason = buf[i + 2] if length > 2 else 0
                if reason >= 0x80:
                    self.refused += 1
                else:
                    self.acked += 1
            del buf[:i + length]


class FloorPipeline:
    """The minimal store + MQTT + InfluxDB behind the bare loop (see the module's text)."""

    def __init__(self, folder: Path, gateway: str, mqtt_port: int, influx_url: str) -> None:
        self.gateway = gateway
        self.folder = folder
        self.mqtt_port = mqtt_port
        self.influx_host, _, port = influx_url.removeprefix("http://").partition(":")
        self.influx_port = int(port or 8086)
        self.pending: list[tuple[Any, ...]] = []
        self.lines: list[str] = []
        self.seq = 0
        self.packet_id = 0
        self.committed = 0
        self.posted = 0
        self.mqtt: _Mqtt | None = None
        self._wake = threading.Event()
        self._lines_lock = threading.Lock()
        self._stop = False
        self._loop: asyncio.AbstractEventLoop | None = None

    async def start(self) -> None:
        """Open the store and its writer thread, connect MQTT, start the InfluxDB thread."""
        loop = self._loop = asyncio.get_running_loop()
        _tr, self.mqtt = await loop.create_connection(_Mqtt, "127.0.0.1", self.mqtt_port)
        assert self.mqtt.transport is not None
        self.mqtt.transport.write(mqtt_connect(f"floor-{id(self)}"))
        reason = await asyncio.wait_for(self.mqtt.connected, 5)
        if reason:
            raise SystemExit(f"the broker refused the floor's CONNECT (reason {reason})")
        threading.Thread(target=self._writer, name="floor-writer", daemon=True).start()
        threading.Thread(target=self._influx, name="floor-influx", daemon=True).start()

    async def finish(self) -> dict[str, int]:
        """After the last reads: let the last commits be published and posted, close, and
        say what was done (rows committed, PUBACKs, refusals, lines posted)."""
        await asyncio.sleep(2 * INFLUX_EVERY_S)
        await self.close()
        assert self.mqtt is not None
        return {"floor_committed": self.committed, "floor_mqtt_acked": self.mqtt.acked,
                "floor_mqtt_refused": self.mqtt.refused, "floor_influx_posted": self.posted}

    async def close(self) -> None:
        """Let the threads end after their current round and close the MQTT connection."""
        self._stop = True
        self._wake.set()
        if self.mqtt is not None and self.mqtt.transport is not None:
            self.mqtt.transport.close()
            await asyncio.sleep(0)            # the transport lets go of its socket

    def take(self, meter: int, schedule: str, slot: float, regs: list[tuple[int, ...]]) -> None:
        """One good read (the registers of each request): its row joins the next commit."""
        r0, r1, r2 = regs
        values = ((r0[0] << 16 | r0[1]) / 100, (r0[2] << 16 | r0[3]) / 100, (r0[4] << 16 | r0[5]) / 100,
                  (r0[6] << 16 | r0[7]) / 100, (r0[8] << 16 | r0[9]) / 100, (r1[0] << 16 | r1[1]) / 1e6,
                  r2[0] / 10, r2[1] / 10, r2[2] / 10)
        stored = "\x1f".join(map(str, values))
        self.pending.append(("reading", f"m{meter}", schedule, "realtime", slot, time.time(), "good", stored, 1))
        self._wake.set()

    def _writer(self) -> None:
        conn = sqlite3.connect(self.folder / "floor.sqlite", isolation_level=None, check_same_thread=False)
        conn.executescript(_SCHEMA)
        insert = ("INSERT INTO outbox(kind, meter, schedule, retention, slot, ts, quality, payload, shape) "
                  "VALUES (?,?,?,?,?,?,?,?,?)")
        while not self._stop:
            self._wake.wait()
            time.sleep(GROUP_S)
            self._wake.clear()
            rows, self.pending = self.pending, []
            if not rows:
                continue
            conn.execute("BEGIN IMMEDIATE")
            conn.executemany(insert, rows)
            conn.execute("COMMIT")
            assert self._loop is not None
            self._loop.call_soon_threadsafe(self._committed, rows)
        conn.close()

    def _committed(self, rows: list[tuple[Any, ...]]) -> None:
        """On the loop after a COMMIT: publish every row, queue its InfluxDB line."""
        gw = self.gateway
        out = []
        lines = []
        for _kind, meter, schedule, _ret, slot, ts, quality, stored, _shape in rows:
            self.seq += 1
            values = stored.split("\x1f")
            doc = {
                "schema": "amr.reading.v1", "gateway": gw, "seq": self.seq, "meter": meter,
                "customer": "C" + meter[1:], "bus": "b" + meter[1:], "schedule": schedule,
                "slot": datetime.fromtimestamp(slot, UTC).isoformat(timespec="milliseconds"),
                "ts": datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds"),
                "quality": quality, "multiplier": {"ct": 1, "pt": 1},
                "points": {p: {"raw": float(v), "value": float(v), "unit": u, "quality": "good"}
                           for p, u, v in zip(_POINTS, _UNITS, values, strict=True)},
            }
            self.packet_id = self.packet_id % 65535 + 1
            out.append(mqtt_publish(f"amr/{gw}/meters/{meter}/reading", self.packet_id, json.dumps(doc).encode()))
            fields = ",".join(f"{p}={v}" for p, v in zip(_POINTS, values, strict=True))
            lines.append(f"amr_reading,gateway={gw},meter={meter},schedule={schedule} {fields},seq={self.seq}i "
                         f"{int(slot * 1e9)}")
        with self._lines_lock:
            self.lines += lines
        self.committed += len(rows)
        assert self.mqtt is not None and self.mqtt.transport is not None
        self.mqtt.transport.write(b"".join(out))

    def _influx(self) -> None:
        conn = http.client.HTTPConnection(self.influx_host, self.influx_port, timeout=10)
        while not self._stop:
            time.sleep(INFLUX_EVERY_S)
            with self._lines_lock:
                lines, self.lines = self.lines, []
            if not lines:
                continue
            conn.request("POST", "/api/v2/write?org=bench&bucket=floor&precision=ns", "\n".join(lines).encode(),
                         {"Content-Type": "text/plain"})
            resp = conn.getresponse()
            resp.read()
            if resp.status // 100 == 2:
                self.posted += len(lines)
        conn.close()
