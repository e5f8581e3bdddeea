"""``amr-gateway meter exchange|ratio-change``: record a meter exchange (换表) or a CT/PT change.

The command posts to the running gateway's API (``POST /api/v1/meters/{id}/exchanges`` and
``.../ratio-changes``, :mod:`gateway.api.routes_changes`), so the checks, the record, the review
event and the audit entry are exactly those of the API, and the gateway stays the only writer
of its store (the command never opens it). Where the API is: ``--url``, or the ``api.listen``
of ``-c CONFIG``. The operator token: the ``AMR_API_TOKEN`` environment variable or
``--token-file`` (never an argument, which other users could see in the process list).

Registers are given as ``NAME=VALUE`` as the meter shows them, one option per register::

    AMR_API_TOKEN=... amr-gateway meter exchange m1 -c /etc/amr-gateway/config.yaml \\
        --at 2026-12-15T10:30:00+08:00 --new-serial 3412009876 \\
        --old-final energy_import_kwh=12345.67 --new-initial energy_import_kwh=0.50

Exit 0 with the stored record on stdout (JSON); 1 when the gateway refused it or cannot be
reached (its reason on stderr); 2 for bad usage.
"""

from __future__ import annotations

import argparse
import json
import os
import ssl
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any, Final

from gateway.errors import AmrError, ConfigError

TOKEN_ENV: Final = "AMR_API_TOKEN"
TIMEOUT_S: Final = 30.0


class ChangeRefused(AmrError):
    """The gateway answered the request with an error (its message says what to change)."""


def add_meter_command(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``meter exchange`` and ``meter ratio-change``."""
    meter = sub.add_parser("meter", help="record a meter exchange (换表) or a CT/PT change on the running gateway")
    actions = meter.add_subparsers(dest="meter_action", required=True, metavar="ACTION")
    ex = actions.add_parser("exchange", help="the old meter's final and the new meter's initial registers")
    ex.add_argument("--old-final", action="append", default=[], metavar="REGISTER=VALUE", required=True,
                    help="the old meter's final register as shown (repeat for every register of the plan)")
    ex.add_argument("--new-initial", action="append", default=[], metavar="REGISTER=VALUE", required=True,
                    help="the new meter's initial register as shown (repeat for every register of the plan)")
    ex.add_argument("--new-serial", required=True, help="the new meter's serial number")
    rc = actions.add_parser("ratio-change", help="a CT/PT change with the registers at that time")
    rc.add_argument("--register", action="append", default=[], metavar="REGISTER=VALUE", required=True,
                    help="a register as the meter showed it at the change (repeat for every register of the plan)")
    for p in (ex, rc):
        p.add_argument("meter", help="the meter's id in the configuration")
        p.add_argument("--at", required=True, help="when, ISO-8601 such as 2026-12-15T10:30:00+08:00")
        p.add_argument("--ct", help="the new CT ratio such as 400/5" + (" (default: unchanged)" if p is ex else ""))
        p.add_argument("--pt", help="the new PT ratio such as 10000/100" + (" (default: unchanged)" if p is ex else ""))
        p.add_argument("--note", help="free text kept with the record")
        where = p.add_mutually_exclusive_group(required=True)
        where.add_argument("--url", help="the gateway's API, such as http://127.0.0.1:8080")
        where.add_argument("-c", "--config", type=Path, help="the gateway's configuration (its api.listen)")
        p.add_argument("--token-file", type=Path, help=f"file holding the operator token (default: ${TOKEN_ENV})")
        p.add_argument("--cafile", type=Path, help="CA certificate of the API's TLS certificate")
    meter.set_defaults(func=cmd_meter)


def _registers(items: list[str], option: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name.strip() or not value.strip():
            raise ConfigError(f"{option} takes REGISTER=VALUE such as energy_import_kwh=12345.67, not {item!r}")
        out[name.strip()] = value.strip()
    return out


def _base_url(args: argparse.Namespace) -> str:
    if args.url:
        return str(args.url).rstrip("/")
    from gateway.config import load_settings

    api = load_settings(args.config).api
    host = "127.0.0.1" if api.host in ("0.0.0.0", "", "::") else api.host
    host = f"[{host}]" if ":" in host else host
    return f"{'https' if api.tls is not None else 'http'}://{host}:{api.port}"


def _token(args: argparse.Namespace) -> str:
    if args.token_file is not None:
        try:
            token = Path(args.token_file).read_text().strip()
        except OSError as exc:
            raise ConfigError(f"cannot read --token-file {args.token_file}: {exc.strerror}") from None
    else:
        token = os.environ.get(TOKEN_ENV, "").strip()
    if not token:
        raise ConfigError(f"no operator token: set {TOKEN_ENV} or give --token-file (make one with "
                          "`amr-gateway token add --role operator --name ...`)")
    return token


def request_body(args: argparse.Namespace) -> tuple[str, dict[str, Any]]:
    """The route (``exchanges`` or ``ratio-changes``) and the JSON body the command sends."""
    body: dict[str, Any] = {"at": args.at}
    for key in ("ct", "pt", "note"):
        if getattr(args, key) is not None:
            body[key] = getattr(args, key)
    if args.meter_action == "exchange":
        body["old_final"] = _registers(args.old_final, "--old-final")
        body["new_initial"] = _registers(args.new_initial, "--new-initial")
        body["new_serial"] = args.new_serial
        return "exchanges", body
    body["registers"] = _registers(args.register, "--register")
    return "ratio-changes", body


def post(url: str, token: str, body: dict[str, Any], cafile: Path | None) -> dict[str, Any]:
    """POST ``body`` as JSON with the bearer token; the decoded reply (ChangeRefused on an error)."""
    req = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST", headers={
        "Authorization": f"Bearer {token}", "Content-Type": "application/json"})
    context = ssl.create_default_context(cafile=str(cafile)) if cafile is not None else None
    try:
        with urllib.request.urlopen(req, timeout=TIMEOUT_S, context=context) as resp:
            doc = json.loads(resp.read().decode() or "{}")
    except urllib.error.HTTPError as exc:
        text = exc.read().decode(errors="replace")
        try:
            reason = json.loads(text).get("error") or text
        except (ValueError, AttributeError):
            reason = text
        raise ChangeRefused(f"the gateway refused it (HTTP {exc.code}): {reason}") from None
    except (urllib.error.URLError, OSError) as exc:
        why = getattr(exc, "reason", exc)
        raise ChangeRefused(f"cannot reach the gateway's API at {url}: {why}; is the gateway running, and is "
                            "--url / api.listen right?") from None
    return doc if isinstance(doc, dict) else {"reply": doc}


def cmd_meter(args: argparse.Namespace) -> int:
    """Run ``meter exchange|ratio-change``: post, print the stored record."""
    route, body = request_body(args)
    url = f"{_base_url(args)}/api/v1/meters/{urllib.parse.quote(args.meter, safe='')}/{route}"
    doc = post(url, _token(args), body, args.cafile)
    print(json.dumps(doc, ensure_ascii=False, indent=2))
    return 0


__all__ = ["TOKEN_ENV", "ChangeRefused", "add_meter_command", "cmd_meter", "post", "request_body"]
