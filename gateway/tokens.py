"""API tokens with roles, kept hashed in a file in the state directory.

A token is ``amr_<id>_<secret>``: ``id`` (8 hex digits) names it in lists, logs and the
audit log and finds its record in O(1); ``secret`` (32 random bytes, URL-safe) is shown
once, when the token is made, and stored only as ``sha256(salt || secret)`` with a random
per-token salt. Presented tokens are compared in constant time (:func:`hmac.compare_digest`).

Roles are ordered: ``admin`` ⊇ ``operator`` ⊇ ``reader``. ``reader`` may GET, ``operator``
may use the write routes (manual readings, exchanges, ratio changes, confirmations, event
acknowledgement), ``admin`` may also manage tokens.

The file (:data:`TOKEN_FILE` in ``gateway.data_dir``, mode 0600) is JSON and is rewritten
atomically (temporary file, fsync, rename, fsync of the directory) under an exclusive lock
(:data:`TOKEN_FILE` + ``.lock``), so two ``amr-gateway token`` commands never lose each
other's change and a running gateway never reads half a file. A running gateway re-reads it
when its modification time, size or inode change (:class:`TokenFile.current`), so a token
added or revoked takes effect without a restart. Run as root, the files are handed to the
owner of the state directory (the gateway's user), so ``sudo amr-gateway token add`` works.
"""

from __future__ import annotations

import contextlib
import enum
import fcntl
import hashlib
import hmac
import json
import os
import secrets
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Final

from gateway.audit import give_to_dir_owner
from gateway.errors import AmrError

TOKEN_FILE: Final = "api-tokens.json"
TOKEN_PREFIX: Final = "amr_"
_ID_HEX: Final = 8
_FORMAT_VERSION: Final = 1


class TokenError(AmrError):
    """A token command cannot be done (unknown id, bad role, unreadable token file)."""


class Role(enum.IntEnum):
    """What a token may do; a higher role may do everything a lower one may."""

    READER = 1
    OPERATOR = 2
    ADMIN = 3

    @property
    def label(self) -> str:
        """The role's name as users write it (``reader``, ``operator``, ``admin``)."""
        return self.name.lower()

    @classmethod
    def parse(cls, text: str) -> Role:
        """The role named ``text``; :class:`TokenError` naming the valid ones otherwise."""
        try:
            return cls[text.strip().upper()]
        except KeyError:
            raise TokenError(f"no role {text!r}; use one of: reader, operator, admin") from None


@dataclass(frozen=True, slots=True)
class TokenRecord:
    """One token as stored: never the secret, only its salted hash."""

    id: str
    name: str
    role: str
    created: str
    salt: str
    sha256: str
    revoked: str | None = None

    @property
    def active(self) -> bool:
        """Whether the token is still accepted (not revoked)."""
        return self.revoked is None

    def matches(self, secret: bytes) -> bool:
        """Constant-time check of a presented secret against the stored hash."""
        digest = hashlib.sha256(bytes.fromhex(self.salt) + secret).hexdigest()
        return hmac.compare_digest(digest, self.sha256)


@dataclass(frozen=True, slots=True)
class Identity:
    """Who a request acts as: a token's id, name and role (for role checks and the audit log)."""

    id: str
    name: str
    role: Role

    @property
    def actor(self) -> str:
        """How the audit log names this identity: ``token:<id> (<name>)``."""
        return f"token:{self.id} ({self.name})"


def split_token(presented: bytes) -> tuple[str, bytes] | None:
    """``(id, secret)`` of a presented ``amr_<id>_<secret>``, or None if it is not shaped like one.

    Takes bytes because a bearer header may hold any bytes; anything else is just not a token.
    """
    prefix = TOKEN_PREFIX.encode()
    if not presented.startswith(prefix):
        return None
    body = presented[len(prefix):]
    ident, sep, secret = body.partition(b"_")
    if not sep or len(ident) != _ID_HEX or not secret or any(c not in b"0123456789abcdef" for c in ident):
        return None
    return ident.decode("ascii"), secret


class TokenFile:
    """The token file of one state directory: add, list, revoke, and look tokens up."""

    def __init__(self, data_dir: Path) -> None:
        self.path = data_dir / TOKEN_FILE
        self._lock = threading.Lock()
        self._stamp: tuple[int, int, int] | None = None
        self._records: dict[str, TokenRecord] = {}
        self.load_error: str | None = None

    # ------------------------------------------------------------------ reading
    def records(self) -> list[TokenRecord]:
        """Every token in the file (revoked ones too), oldest first."""
        return list(self._read().values())

    def current(self) -> dict[str, TokenRecord]:
        """The records by id, re-read only when the file changed since the last call.

        A missing file is no tokens. An unreadable or malformed file is no tokens too (the
        gateway refuses them all rather than guess) and :attr:`load_error` says why.
        """
        try:
            st = os.stat(self.path)
            stamp: tuple[int, int, int] | None = (st.st_mtime_ns, st.st_size, st.st_ino)
        except FileNotFoundError:
            stamp = None
        with self._lock:
            if stamp != self._stamp or stamp is None:
                try:
                    self._records = self._read() if stamp is not None else {}
                    self.load_error = None
                except TokenError as exc:
                    self._records = {}
                    self.load_error = str(exc)
                self._stamp = stamp
            return self._records

    def identify(self, presented: bytes) -> Identity | None:
        """The identity of an active token matching ``presented``, else None."""
        parts = split_token(presented)
        if parts is None:
            return None
        record = self.current().get(parts[0])
        if record is None or not record.active or not record.matches(parts[1]):
            return None
        return Identity(record.id, record.name, Role.parse(record.role))

    def _read(self) -> dict[str, TokenRecord]:
        try:
            raw = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return {}
        except OSError as exc:
            raise TokenError(f"cannot read the token file {self.path} ({exc.strerror}); check its owner "
                             "and mode (0600, owned by the gateway's user)") from None
        try:
            doc = json.loads(raw)
            records = {r["id"]: TokenRecord(**r) for r in doc["tokens"]}
            for r in records.values():
                Role.parse(r.role)
                bytes.fromhex(r.salt)
            return records
        except TokenError as exc:
            raise TokenError(f"the token file {self.path} is malformed ({exc})") from None
        except (ValueError, KeyError, TypeError) as exc:
            raise TokenError(f"the token file {self.path} is malformed ({exc}); restore it from a backup "
                             "or move it away and add tokens again") from None

    # ------------------------------------------------------------------ changing
    def add(self, name: str, role: Role, now: str) -> tuple[str, TokenRecord]:
        """Make a token; returns ``(token, record)``. The token is not kept: show it once."""
        name = name.strip()
        if not name or any(c in name for c in "\r\n\t"):
            raise TokenError("a token needs a name on one line, e.g. --name billing-import")
        with self._exclusive() as records:
            ident = secrets.token_hex(_ID_HEX // 2)
            while ident in records:
                ident = secrets.token_hex(_ID_HEX // 2)
            secret = secrets.token_urlsafe(32)
            salt = secrets.token_bytes(16)
            record = TokenRecord(id=ident, name=name, role=role.label, created=now, salt=salt.hex(),
                                 sha256=hashlib.sha256(salt + secret.encode()).hexdigest())
            records[ident] = record
        return f"{TOKEN_PREFIX}{ident}_{secret}", record

    def revoke(self, ident: str, now: str) -> tuple[TokenRecord, TokenRecord]:
        """Revoke the token ``ident``; returns the record before and after."""
        with self._exclusive() as records:
            before = records.get(ident.strip())
            if before is None:
                known = ", ".join(sorted(records)) or "none"
                raise TokenError(f"no token with id {ident!r} (ids: {known}); `amr-gateway token list` shows them")
            if not before.active:
                raise TokenError(f"token {before.id} ({before.name}) was already revoked at {before.revoked}")
            after = replace(before, revoked=now)
            records[before.id] = after
        return before, after

    @contextlib.contextmanager
    def _exclusive(self) -> Iterator[dict[str, TokenRecord]]:
        """Read-modify-write under the lock file; the dict as left is written atomically."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(f"{self.path}.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            give_to_dir_owner(fd, self.path.parent)
            fcntl.flock(fd, fcntl.LOCK_EX)
            records = self._read()
            yield records
            self._write(records)
        finally:
            os.close(fd)

    def _write(self, records: dict[str, TokenRecord]) -> None:
        doc: dict[str, Any] = {"version": _FORMAT_VERSION, "tokens": [asdict(r) for r in records.values()]}
        fd, tmp = tempfile.mkstemp(prefix=f".{TOKEN_FILE}.", dir=self.path.parent)  # mode 0600
        try:
            give_to_dir_owner(fd, self.path.parent)
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(doc, f, indent=1)
                f.write("\n")
                f.flush()
                os.fsync(f.fileno())
            os.chmod(tmp, 0o600)
            os.replace(tmp, self.path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        dfd = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)


__all__ = ["TOKEN_FILE", "Identity", "Role", "TokenError", "TokenFile", "TokenRecord", "split_token"]
