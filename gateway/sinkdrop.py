"""``amr-gateway sink drop NAME``: explicitly discard a sink's undelivered backlog, audited.

Retention never deletes a row some sink (enabled, disabled, or left from an earlier
configuration) has not acknowledged (gateway/store.py, invariant 4), so a sink that will
never deliver again holds the store's rows for ever. This is the one way to let them go:

* a sink the configuration still names (enabled or disabled) has its cursor moved to the
  store's last seq: what it had not delivered is discarded, it delivers from there on;
* a sink the configuration no longer names has its cursor removed: it is forgotten.

Either way one ``audit`` row in the store and one entry in the hash-chained audit log
(:mod:`gateway.audit`, ``sink.drop``) record who, when, which sink and which seqs were given
up, and retention may then delete those rows. The gateway must be stopped: the command needs
the store to itself (the lock file every open store holds shared, see
:func:`gateway.store.lock_path`), or a running gateway would keep its own cursor in memory.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import getpass
import os
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from gateway.errors import ConfigError, StoreError


@dataclass(frozen=True, slots=True)
class Dropped:
    """What a drop did: the sink's cursor before, the seq it now stands at (None when the
    sink was forgotten) and how many committed messages it gave up."""

    sink: str
    action: Literal["advanced", "forgotten"]
    from_seq: int
    to_seq: int | None
    discarded: int


def drop_sink_backlog(db: Path, sink: str, configured: bool, who: str, now: float) -> Dropped:
    """Discard ``sink``'s backlog in the store at ``db`` and audit it (see the module doc).

    Raises :class:`StoreError` when the store is open elsewhere (a running gateway) or
    missing, :class:`ConfigError` when ``sink`` is neither configured nor has a cursor.
    """
    from gateway.store import lock_path  # the CLI imports this module for every command: kept light

    if not db.exists():
        raise StoreError(f"there is no local store at {db}; check gateway.data_dir in the configuration")
    fd = os.open(lock_path(db), os.O_RDWR | os.O_CREAT, 0o640)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise StoreError(
                f"the store {db} is in use (a running gateway or another amr-gateway command); "
                "stop the gateway first (systemctl stop amr-gateway), then run sink drop again"
            ) from None
        conn = sqlite3.connect(db, isolation_level=None, timeout=30.0)
        try:
            return _drop(conn, sink, configured, who, now)
        finally:
            conn.close()
    finally:
        os.close(fd)


def _drop(conn: sqlite3.Connection, sink: str, configured: bool, who: str, now: float) -> Dropped:
    from gateway.model import to_json

    conn.execute("BEGIN IMMEDIATE")
    try:
        cursors = dict(conn.execute("SELECT sink, acked_seq FROM sink_cursor").fetchall())
        if sink not in cursors and not configured:
            known = ", ".join(sorted(cursors)) or "none"
            raise ConfigError(f"no sink {sink!r} in the configuration or the store (sinks with a cursor: {known})")
        row = conn.execute("SELECT seq FROM sqlite_sequence WHERE name='outbox'").fetchone()
        last = int(row[0]) if row else 0
        before = int(cursors.get(sink, 0))
        discarded = int(conn.execute("SELECT count(*) FROM outbox WHERE seq > ?", (before,)).fetchone()[0])
        if configured:
            conn.execute(
                "INSERT INTO sink_cursor(sink, acked_seq) VALUES (?, ?) "
                "ON CONFLICT(sink) DO UPDATE SET acked_seq=max(acked_seq, excluded.acked_seq)",
                (sink, last),
            )
            result = Dropped(sink, "advanced", before, last, discarded)
        else:
            conn.execute("DELETE FROM sink_cursor WHERE sink=?", (sink,))
            result = Dropped(sink, "forgotten", before, None, discarded)
        detail = {"sink": sink, "action": result.action, "from_seq": before, "to_seq": result.to_seq,
                  "discarded": discarded, "by": who}
        conn.execute("INSERT INTO audit(ts, meter, kind, detail) VALUES (?,?,?,?)",
                     (now, None, "sink_drop", to_json(detail)))
        conn.execute("COMMIT")
    except BaseException:
        with contextlib.suppress(sqlite3.Error):
            conn.execute("ROLLBACK")
        raise
    return result


def cmd_sink_drop(args: argparse.Namespace) -> int:
    """``amr-gateway sink drop NAME -c FILE``: discard the sink's backlog (module doc)."""
    from gateway.audit import AuditLog
    from gateway.config import load_settings
    from gateway.runtime import STORE_FILE
    from gateway.sinks.delivery import configured_sinks

    settings = load_settings(args.config)
    enabled, disabled = configured_sinks(settings)
    try:
        who = getpass.getuser()
    except (KeyError, OSError):
        who = f"uid {os.getuid()}"
    done = drop_sink_backlog(settings.gateway.data_dir / STORE_FILE, args.name, args.name in enabled + disabled,
                             who, time.time())
    AuditLog.in_dir(settings.gateway.data_dir).append(
        f"cli:{who}", "sink.drop", done.sink, {"acked_seq": done.from_seq},
        {"acked_seq": done.to_seq, "action": done.action, "discarded": done.discarded})
    if done.action == "advanced":
        print(f"sink {done.sink}: {done.discarded} undelivered messages discarded (cursor {done.from_seq} -> "
              f"{done.to_seq}); it delivers from there on; audited")
    else:
        print(f"sink {done.sink}: not configured, forgotten ({done.discarded} messages after its cursor "
              f"{done.from_seq} no longer held for it); audited")
    return 0


def add_sink_command(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``sink drop NAME -c FILE`` on the CLI's subcommands (``func`` runs it)."""
    sink = sub.add_parser("sink", help="act on a sink's delivery state in the local store")
    actions = sink.add_subparsers(dest="sink_action", required=True, metavar="ACTION")
    drop = actions.add_parser("drop", help="explicitly discard a sink's undelivered backlog (audited); "
                                           "stop the gateway first")
    drop.add_argument("name", help="the sink: mqtt or influxdb (or one no longer configured)")
    drop.add_argument("-c", "--config", required=True, type=Path)
    drop.set_defaults(func=cmd_sink_drop)


__all__ = ["Dropped", "add_sink_command", "cmd_sink_drop", "drop_sink_backlog"]
