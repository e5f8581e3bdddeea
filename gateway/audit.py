"""The audit log: every write, who made it, when, what, before and after, hash-chained.

One JSON object per line in :data:`AUDIT_FILE` in ``gateway.data_dir``, appended and never
rewritten (mode 0600, fsync on every append)::

    {"seq":1,"ts":"2026-12-06T02:10:00Z","actor":"cli:ops","action":"token.add","subject":"3fa2c01b",
     "before":null,"after":{...},"prev":"<sha256 of the previous entry>","hash":"<sha256 of this one>"}

``hash`` is the SHA-256 of the line's exact bytes up to (not including) ``,"hash":``, closed
with ``}``; ``prev`` is the previous entry's ``hash`` (:data:`GENESIS` for the first entry);
``seq`` counts from 1. So a changed byte breaks the entry's own hash, a deleted entry breaks
the ``seq`` run and the next entry's ``prev``, and reordered entries break both.
:func:`verify` names the first broken entry by line number and why.

What a chain cannot show: entries cut off the *end* of the file (the rest still chains).
Keep a copy of the last ``hash`` elsewhere (the log says it on every append at debug level)
to catch that.

Writers: ``amr-gateway token add|revoke``, the token API routes, ``amr-gateway sink drop``;
the billing writes (ratio changes, exchanges, manual readings) and review acknowledgements
call :meth:`AuditLog.append` the same way (from the event loop: ``asyncio.to_thread``).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from gateway.errors import AmrError
from gateway.model import iso_utc, to_json

log = logging.getLogger("amr.audit")

AUDIT_FILE: Final = "audit.jsonl"
GENESIS: Final = hashlib.sha256(b"amr-gateway audit log v1").hexdigest()
_HASH_TAIL = re.compile(rb',"hash":"([0-9a-f]{64})"\}$')
_TAIL_READ = 64 * 1024


class AuditError(AmrError):
    """The audit log cannot take an entry (unwritable, or its last entry is incomplete)."""


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """One appended entry: its number, its hash, and the line as written."""

    seq: int
    hash: str
    line: str


def give_to_dir_owner(fd: int, directory: Path) -> None:
    """Run as root, hand a state file to the owner of its directory (the gateway's user).

    So ``sudo amr-gateway token add`` or ``sudo amr-gateway sink drop`` never leaves a
    root-owned 0600 file in ``gateway.data_dir`` that locks the running gateway out.
    """
    if os.geteuid() != 0:
        return
    st = os.stat(directory)
    os.fchown(fd, st.st_uid, st.st_gid)


def seal(fields: dict[str, object]) -> tuple[str, str]:
    """``(line, hash)`` for an entry's fields (which must include ``prev``, not ``hash``)."""
    body = to_json(fields).encode("utf-8", "replace").decode("utf-8")  # lone surrogates: '?'
    digest = hashlib.sha256(body.encode("utf-8")).hexdigest()
    return f'{body[:-1]},"hash":"{digest}"}}', digest


class AuditLog:
    """The append-only, hash-chained audit log at ``path`` (see the module doc)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()

    @classmethod
    def in_dir(cls, data_dir: Path) -> AuditLog:
        """The audit log of a state directory (``gateway.data_dir``)."""
        return cls(data_dir / AUDIT_FILE)

    def append(self, actor: str, action: str, subject: str | None, before: object, after: object,
               now: float | None = None) -> AuditEntry:
        """Append one entry chained to the last and fsync it; returns what was written.

        ``actor``: who (``token:<id> (<name>)``, ``cli:<user>``); ``action``: what, dotted
        (``token.add``, ``sink.drop``, ``meter.ratio_change``); ``subject``: what it was done
        to (a token id, sink, meter); ``before``/``after``: plain JSON-able data (Decimals are
        kept exact). Safe from several threads and processes (an exclusive ``flock``).
        """
        ts = iso_utc(time.time() if now is None else now)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._lock:
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o600)
            except OSError as exc:
                raise AuditError(f"cannot open the audit log {self.path} ({exc.strerror}); check that "
                                 "gateway.data_dir is writable by the gateway's user") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                give_to_dir_owner(fd, self.path.parent)
                seq, prev = _last_entry(fd, self.path)
                fields: dict[str, object] = {"seq": seq + 1, "ts": ts, "actor": actor, "action": action,
                                             "subject": subject, "before": before, "after": after,
                                             "prev": prev}
                line, digest = seal(fields)
                data = (line + "\n").encode("utf-8")
                if os.write(fd, data) != len(data):
                    raise AuditError(f"the audit log {self.path} took a partial entry (disk full?); "
                                     "free space, then run `amr-gateway audit verify`")
                os.fsync(fd)
                if seq == 0:                         # a new log: make its directory entry durable too
                    _fsync_dir(self.path.parent)
            finally:
                os.close(fd)
        log.debug("audit %d %s %s by %s; chain head %s", seq + 1, action, subject, actor, digest)
        return AuditEntry(seq + 1, digest, line)


def _fsync_dir(directory: Path) -> None:
    dfd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def _last_entry(fd: int, path: Path) -> tuple[int, str]:
    """``(seq, hash)`` of the last entry (``(0, GENESIS)`` for an empty log), read from the end."""
    size = os.fstat(fd).st_size
    if size == 0:
        return 0, GENESIS
    start = max(0, size - _TAIL_READ)
    chunk = os.pread(fd, size - start, start)
    while True:
        if not chunk.endswith(b"\n"):
            raise AuditError(f"the audit log {path} ends with an incomplete entry; run `amr-gateway audit "
                             "verify` and keep the file for inspection before writing more")
        cut = chunk.rfind(b"\n", 0, len(chunk) - 1)
        if cut >= 0 or start == 0:
            break
        start = max(0, start - _TAIL_READ)
        chunk = os.pread(fd, size - start, start)
    last = chunk[cut + 1:-1]
    m = _HASH_TAIL.search(last)
    try:
        seq = json.loads(last)["seq"]
    except (ValueError, KeyError, TypeError):
        seq = None
    if m is None or not isinstance(seq, int):
        raise AuditError(f"the last entry of the audit log {path} is damaged; run `amr-gateway audit verify`")
    return seq, m.group(1).decode()


@dataclass(frozen=True, slots=True)
class Verdict:
    """What :func:`verify` found: how many entries chain, and the first broken one if any."""

    entries: int
    broken_line: int | None = None
    reason: str | None = None
    head: str = GENESIS

    @property
    def intact(self) -> bool:
        """Whether every entry chains."""
        return self.broken_line is None


def verify(path: Path) -> Verdict:
    """Check the chain of the audit log at ``path`` (a missing file is an empty, intact log)."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return Verdict(0)
    lines = data.split(b"\n")
    if lines[-1] == b"":
        lines.pop()
        complete = True
    else:
        complete = False
    prev, seq = GENESIS, 0
    for number, raw in enumerate(lines, start=1):
        if number == len(lines) and not complete:
            reason: str | None = "the entry has no line end (its write was cut off, or bytes were changed)"
        else:
            reason = _check(raw, seq, prev)
        if reason is not None:
            return Verdict(number - 1, number, reason, prev)
        seq += 1
        m = _HASH_TAIL.search(raw)
        assert m is not None
        prev = m.group(1).decode()
    return Verdict(seq, head=prev)


def _check(raw: bytes, seq: int, prev: str) -> str | None:
    """Why line ``raw`` (expected to be entry ``seq + 1`` after hash ``prev``) is broken, or None."""
    try:
        raw.decode("utf-8")
        doc = json.loads(raw)
    except ValueError:
        return "not a JSON entry (changed or damaged bytes)"
    if not isinstance(doc, dict):
        return "not a JSON object (changed or damaged bytes)"
    m = _HASH_TAIL.search(raw)
    if m is None:
        return 'no "hash" at the end of the entry (changed or damaged bytes)'
    body = raw[:m.start()] + b"}"
    if hashlib.sha256(body).hexdigest() != m.group(1).decode():
        return "its content does not match its hash (the entry was changed)"
    got = doc.get("seq")
    if not isinstance(got, int):
        return "no seq number"
    if got > seq + 1:
        missing = f"entry {seq + 1} is" if got == seq + 2 else f"entries {seq + 1}..{got - 1} are"
        return f"seq {got} where {seq + 1} was expected: {missing} missing here (deleted or moved)"
    if got < seq + 1:
        return f"seq {got} where {seq + 1} was expected: entries reordered or repeated"
    if doc.get("prev") != prev:
        which = "the genesis value" if seq == 0 else f"entry {seq}'s hash"
        return f"its prev does not match {which} (entries were replaced, reordered or deleted)"
    return None


__all__ = ["AUDIT_FILE", "GENESIS", "AuditEntry", "AuditError", "AuditLog", "Verdict", "give_to_dir_owner", "seal",
           "verify"]
