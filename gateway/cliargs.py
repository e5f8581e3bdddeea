"""Checks of command-line values that argparse's types cannot express: addresses, ports,
positive numbers, times and the export step.

They run once, right after parsing and before any command starts, so a wrong value is an
argparse usage error (``amr-gateway: error: argument --listen: ...``, exit 2) that names
the option, never a traceback, a raw socket error, or a message dressed as a configuration
problem. Each check reads an attribute only when the command has that option.
"""

from __future__ import annotations

import argparse
import ipaddress
import math
import re
from typing import Final

_HOSTNAME: Final = re.compile(r"^(?=.{1,253}$)[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
                              r"(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\.?$")


class BadValue(ValueError):
    """A command-line value that cannot be used; the message says what to write instead."""


def check_host(text: str) -> str:
    """``text`` as a host: an IPv4 or IPv6 address (``[::1]`` or ``::1``) or a DNS name."""
    if not text:
        raise BadValue("has no host; write one such as 127.0.0.1")
    bare = text[1:-1] if text.startswith("[") and text.endswith("]") else text
    if re.fullmatch(r"[0-9.]+", bare) or ":" in bare:
        try:
            return str(ipaddress.ip_address(bare))
        except ValueError:
            raise BadValue(f"{text!r} is not an IP address (each IPv4 part is 0-255, e.g. 192.168.1.10)") from None
    if not _HOSTNAME.match(bare):
        raise BadValue(f"{text!r} is not a host name or IP address")
    return bare


def check_port(text: str) -> int:
    """``text`` as a TCP port, 1-65535."""
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise BadValue(f"port {text!r} is not a port number; use 1-65535")
    return int(text)


def host_port(text: str, default_port: int | None = None) -> tuple[str, int]:
    """``HOST:PORT`` (``[v6]:PORT`` for IPv6) as (host, port); the port may be left out only
    when ``default_port`` is given."""
    if text.startswith("["):
        end = text.find("]")
        host, rest = (text[:end + 1], text[end + 1:]) if end > 0 else (text, "")
        if rest and not rest.startswith(":"):
            raise BadValue(f"must be [IPv6]:PORT such as [::1]:8080, not {text!r}")
        port = rest[1:]
    elif text.count(":") == 1:
        host, port = text.split(":")
    else:
        host, port = text, ""        # no port, or a bare IPv6 address
    if port == "":
        if default_port is None:
            raise BadValue(f"must be HOST:PORT such as 127.0.0.1:8080, not {text!r}")
        return check_host(host), default_port
    return check_host(host), check_port(port)


def check_positive(value: float, what: str = "must be") -> float:
    """``value`` when it is a finite number above zero."""
    if not math.isfinite(value) or value <= 0:
        raise BadValue(f"{what} a positive number, not {value:g}")
    return value


ADDRESS_OPTIONS: Final = (("listen", "--listen", None), ("mqtt", "--mqtt", 1883), ("tcp", "--tcp", None))
"""Options holding HOST:PORT (attribute, option, the port when left out; None: required)."""

POSITIVE_OPTIONS: Final = (("baud", "--baud"), ("timeout", "--timeout"), ("clock_rate", "--clock-rate"),
                           ("duration", "--duration"))
"""Options whose number must be above zero."""


def check_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Check every option this command has; the first bad one ends the program as a usage
    error (exit 2) through ``parser.error``."""
    given = vars(args)
    for name, option, default_port in ADDRESS_OPTIONS:
        if given.get(name) is not None:
            try:
                host_port(str(given[name]), default_port)
            except BadValue as exc:
                parser.error(f"argument {option}: {exc}")
    for name, option in POSITIVE_OPTIONS:
        number = given.get(name)
        if isinstance(number, int | float):
            try:
                check_positive(float(number))
            except BadValue as exc:
                parser.error(f"argument {option}: {exc}")
    if isinstance(given.get("baud"), int) and given["baud"] > 0:
        from gateway.config.buses import STANDARD_BAUDRATES  # the rates a bus's baudrate may have

        if given["baud"] not in STANDARD_BAUDRATES:
            parser.error(f"argument --baud: must be a standard rate ({', '.join(map(str, STANDARD_BAUDRATES))}), "
                         f"not {given['baud']}")
    if given.get("command") == "export" and given.get("step") is not None:
        from gateway.billing.intervals import STEPS

        if given["step"] not in STEPS:
            parser.error(f"argument --step: must be one of {', '.join(STEPS)}, not {given['step']!r}")
    if given.get("clock_start") is not None:
        from gateway.model import parse_iso

        try:
            parse_iso(str(given["clock_start"]))
        except ValueError:
            parser.error("argument --clock-start: must be ISO-8601 such as 2026-11-30T23:50:00+08:00, "
                         f"not {given['clock_start']!r}")


__all__ = ["ADDRESS_OPTIONS", "POSITIVE_OPTIONS", "BadValue", "check_arguments", "check_host", "check_port",
           "check_positive", "host_port"]
