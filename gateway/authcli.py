"""``amr-gateway token add|list|revoke`` and ``amr-gateway audit verify``.

Both act on a state directory: ``gateway.data_dir`` of ``-c FILE``, or ``--data-dir DIR``
directly. They do not need the gateway stopped: a running gateway re-reads the token file
when it changes and appends to the audit log under the same lock. Token changes are audited
as ``cli:<user>``. ``token add`` prints the token once, on stdout, and nowhere else.
"""

from __future__ import annotations

import argparse
import getpass
import os
import sys
import time
from pathlib import Path

from gateway.errors import ConfigError


def _data_dir(args: argparse.Namespace) -> Path:
    """The state directory the command acts on (``--data-dir``, or ``gateway.data_dir`` of ``-c``)."""
    if args.data_dir is not None:
        return Path(args.data_dir)
    if args.config is None:
        raise ConfigError("say which gateway: -c CONFIG (its gateway.data_dir) or --data-dir DIR")
    from gateway.config import load_settings

    return load_settings(args.config).gateway.data_dir


def cli_actor() -> str:
    """How the audit log names a person at the command line: ``cli:<user>``."""
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):
        return f"cli:uid {os.getuid()}"


def cmd_token(args: argparse.Namespace) -> int:
    """``token add|list|revoke``."""
    from gateway.api.auth import public_record
    from gateway.audit import AuditLog
    from gateway.model import iso_utc
    from gateway.tokens import Role, TokenFile

    data_dir = _data_dir(args)
    tokens = TokenFile(data_dir)
    if args.token_action == "add":
        role = Role.parse(args.role)
        token, record = tokens.add(args.name, role, iso_utc(time.time()))
        AuditLog.in_dir(data_dir).append(cli_actor(), "token.add", record.id, None, public_record(record))
        print(token)
        print(f"token {record.id} ({record.name}, {record.role}) added; it is shown only this once",
              file=sys.stderr)
    elif args.token_action == "list":
        records = tokens.records()
        print(f"{'ID':<8}  {'ROLE':<8}  {'CREATED':<24}  {'REVOKED':<24}  NAME")
        for r in records:
            print(f"{r.id:<8}  {r.role:<8}  {r.created:<24}  {r.revoked or '-':<24}  {r.name}")
    else:
        before, after = tokens.revoke(args.id, iso_utc(time.time()))
        AuditLog.in_dir(data_dir).append(cli_actor(), "token.revoke", after.id, public_record(before),
                                         public_record(after))
        print(f"token {after.id} ({after.name}) revoked; a running gateway refuses it from now on")
    return 0


def cmd_audit(args: argparse.Namespace) -> int:
    """``audit verify``: 0 when the chain is intact, 1 naming the first broken entry."""
    from gateway.audit import AuditLog, verify

    log = AuditLog.in_dir(_data_dir(args))
    verdict = verify(log.path)
    if verdict.intact:
        print(f"{log.path}: {verdict.entries} entries, chain intact (head {verdict.head})")
        return 0
    print(f"{log.path}: line {verdict.broken_line} (entry {verdict.entries + 1}) is broken: {verdict.reason}; "
          f"the {verdict.entries} entries before it chain", file=sys.stderr)
    return 1


def _target(p: argparse.ArgumentParser) -> None:
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("-c", "--config", type=Path, help="the gateway's configuration (its gateway.data_dir)")
    which.add_argument("--data-dir", type=Path, help="the gateway's state directory")


def add_auth_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``token add|list|revoke`` and ``audit verify`` (``func`` runs each)."""
    token = sub.add_parser("token", help="API tokens with roles reader, operator, admin (stored hashed)")
    actions = token.add_subparsers(dest="token_action", required=True, metavar="ACTION")
    add = actions.add_parser("add", help="make a token and print it once on stdout")
    add.add_argument("--role", required=True, choices=["reader", "operator", "admin"])
    add.add_argument("--name", required=True, help="who or what uses it, e.g. billing-import")
    _target(add)
    lst = actions.add_parser("list", help="ids, names, roles, created, revoked (never the secret)")
    _target(lst)
    rev = actions.add_parser("revoke", help="revoke a token by id (a running gateway refuses it at once)")
    rev.add_argument("id")
    _target(rev)
    token.set_defaults(func=cmd_token)

    audit = sub.add_parser("audit", help="the hash-chained audit log of every write")
    verbs = audit.add_subparsers(dest="audit_action", required=True, metavar="ACTION")
    ver = verbs.add_parser("verify", help="check the chain; exit 1 naming the first broken entry")
    _target(ver)
    audit.set_defaults(func=cmd_audit)


__all__ = ["add_auth_commands", "cli_actor", "cmd_audit", "cmd_token"]
