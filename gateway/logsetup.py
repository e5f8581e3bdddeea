"""The process's logging: one handler on stderr, in the form the reader of stderr wants.

* Under systemd, stderr is connected to the journal (``$JOURNAL_STREAM`` names the stream's
  device and inode): journald stamps every line itself and reads a ``<N>`` prefix as the
  line's priority (sd-daemon(3) levels: 7 debug, 6 info, 4 warning, 3 error, 2 critical).
  So each line is ``<N>logger: message``, without a timestamp of ours, and every line of
  a multi-line message or traceback carries the prefix (journald reads each line alone).
* Anywhere else (a terminal, a file, a test): ``time level logger: message``, one timestamp.

The configuration's ``logging`` section sets the level of the whole gateway and of single
modules (``levels: {amr.poll: debug}``): :func:`load_logging` reads and checks it with the
other sections, :func:`apply_levels` puts it in force at start and again on every reload.
A ``--log-level`` given on the command line wins over the section's ``level``.
"""

from __future__ import annotations

import logging
import os
import re
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Final, Protocol, TextIO, TypeVar

if TYPE_CHECKING:
    import yaml

    from gateway.yamlpos import Issues

LEVELS: Final = ("debug", "info", "warning", "error")
"""The level names the command line and the configuration accept."""

DEFAULT_LEVEL: Final = "info"

PLAIN_FORMAT: Final = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"
JOURNAL_FORMAT: Final = "%(name)s: %(message)s"

QUIET_LIBRARIES: Final = {"aiohttp.access": logging.WARNING}
"""Libraries whose own logging would drown the gateway's (aiohttp logs every request)."""

_LOGGER_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")

GATEWAY_LOGGERS: Final = (
    "amr.api", "amr.api.auth", "amr.api.changes", "amr.api.http", "amr.audit", "amr.billing", "amr.cli",
    "amr.config", "amr.demo", "amr.dlt698", "amr.heap", "amr.multiplier", "amr.poll", "amr.review",
    "amr.runtime", "amr.scheduler", "amr.sim", "amr.simulated", "amr.sinks", "amr.sinks.influx",
    "amr.sinks.mqtt", "amr.sinks.paho", "amr.store", "amr.transport",
)
"""The gateway's own ``amr.*`` loggers (a unit test holds this to the sources), so that a
``logging: levels:`` entry naming none of them (``amr.pol``) is warned of: its level would
change nothing."""

_log = logging.getLogger("amr.config")


@dataclass(frozen=True)
class LoggingSettings:
    """The ``logging`` section: the gateway's level (None: the default) and per-module levels."""

    level: str | None = None
    levels: Mapping[str, str] = field(default_factory=dict)


def syslog_priority(levelno: int) -> int:
    """The sd-daemon priority (``<N>``) of a Python logging level."""
    if levelno >= logging.CRITICAL:
        return 2
    if levelno >= logging.ERROR:
        return 3
    if levelno >= logging.WARNING:
        return 4
    if levelno >= logging.INFO:
        return 6
    return 7


class JournalFormatter(logging.Formatter):
    """``<N>logger: message`` on every line, no timestamp (journald adds its own)."""

    def __init__(self) -> None:
        super().__init__(JOURNAL_FORMAT)

    def format(self, record: logging.LogRecord) -> str:
        """The record as journal lines, each with the record's priority prefix."""
        prefix = f"<{syslog_priority(record.levelno)}>"
        return "\n".join(prefix + line for line in super().format(record).splitlines() or [""])


def under_journal(stream: TextIO, environ: Mapping[str, str] | None = None) -> bool:
    """Whether ``stream`` is the journal stream systemd gave this process.

    ``$JOURNAL_STREAM`` is ``device:inode`` of that stream; it is inherited by children whose
    stderr may be something else (a pipe, a file), so the stream itself must match it.
    """
    value = (os.environ if environ is None else environ).get("JOURNAL_STREAM", "")
    dev, sep, ino = value.partition(":")
    if not sep or not dev.isdigit() or not ino.isdigit():
        return False
    try:
        st = os.fstat(stream.fileno())
    except (OSError, ValueError, AttributeError):
        return False
    return (st.st_dev, st.st_ino) == (int(dev), int(ino))


def level_number(name: str | None) -> int:
    """The logging level of a level name (``info`` when None or unknown)."""
    return int(getattr(logging, (name or DEFAULT_LEVEL).upper(), logging.INFO))


def setup_logging(level: str | None, *, stream: TextIO | None = None) -> None:
    """Log to stderr at ``level`` (debug, info, warning, error; None: info), journal-style
    under systemd, else with one timestamp; the noisy libraries quietened.

    Like :func:`logging.basicConfig`, it adds nothing when the root logger already has a
    handler (a test runner's, an embedding program's): that host's setup stays.
    """
    out = sys.stderr if stream is None else stream
    root = logging.getLogger()
    if not root.handlers:
        handler = logging.StreamHandler(out)
        handler.setFormatter(JournalFormatter() if under_journal(out) else logging.Formatter(PLAIN_FORMAT))
        root.addHandler(handler)
        root.setLevel(level_number(level))
    for name, quiet in QUIET_LIBRARIES.items():
        logging.getLogger(name).setLevel(quiet)


_module_levels_set: set[str] = set()


def apply_levels(settings: LoggingSettings, cli_level: str | None = None) -> None:
    """Put a configuration's levels in force: the root level (``cli_level`` when the command
    line gave one, else the section's, else info) and each module's; a module the previous
    configuration named and this one does not goes back to following its parent."""
    logging.getLogger().setLevel(level_number(cli_level or settings.level))
    for name in _module_levels_set - set(settings.levels):
        logging.getLogger(name).setLevel(QUIET_LIBRARIES.get(name, logging.NOTSET))
    for name, level in settings.levels.items():
        logging.getLogger(name).setLevel(level_number(level))
    _module_levels_set.clear()
    _module_levels_set.update(settings.levels)


class HasLogging(Protocol):
    """Whatever carries a ``logging`` section (the Settings; named so this module need not
    import them, which import this module's LoggingSettings)."""

    @property
    def logging(self) -> LoggingSettings:
        """The configuration's logging section."""


_Loaded = TypeVar("_Loaded", bound=HasLogging)


def levels_applied(loader: Callable[[Path], _Loaded], cli_level: str | None) -> Callable[[Path], _Loaded]:
    """``loader`` that also puts each configuration it loads in force with :func:`apply_levels`
    (the reload path: a file that does not load changes nothing)."""

    def load(path: Path) -> _Loaded:
        settings = loader(path)
        apply_levels(settings.logging, cli_level)
        return settings

    return load


def load_logging(issues: Issues, node: yaml.Node | None) -> LoggingSettings:
    """The ``logging`` section read and checked (every key optional); problems go to ``issues``.

    ``level``: one of debug, info, warning, error. ``levels``: logger name (``amr.poll``,
    ``amr.sinks.mqtt``, ``pymodbus``, …) to level.
    """
    from gateway.yamlpos import MapView, as_choice

    m = MapView(issues, node, "logging", ("level", "levels"), line=1)
    level = m.opt("level", as_choice(LEVELS, fold_case=True))
    levels: dict[str, str] = {}
    lv = MapView(issues, m.node("levels"), "logging levels", None, line=m.line)
    for name in lv:
        if not _LOGGER_NAME.match(name):
            issues.add(lv.key_line(name), f'logging levels: "{name}" is not a logger name; '
                       "write a dotted module name such as amr.poll")
            continue
        level_of = lv.convert(name, as_choice(LEVELS, fold_case=True))
        if level_of is not None:
            levels[name] = level_of
            unknown = unknown_logger(name)
            if unknown is not None:
                _log.warning("%s:%s: logging levels: %s", issues.file, lv.key_line(name), unknown)
    return LoggingSettings(level=level, levels=levels)


def unknown_logger(name: str) -> str | None:
    """Why a level for logger ``name`` would change nothing (None when it names a logger of
    the gateway, a parent of some, or a library's; a child of one never logs). Only ``amr``-names are judged: the
    gateway cannot know every library's loggers (``pymodbus``, ``aiohttp.access``)."""
    if name != "amr" and not name.startswith("amr."):
        return None
    if any(known == name or known.startswith(name + ".") for known in GATEWAY_LOGGERS):   # it, or a parent
        return None
    from gateway.yamlpos import suggest

    return (f'"{name}" is no logger of the gateway, so its level changes nothing{suggest(name, GATEWAY_LOGGERS)}; '
            f"the gateway's loggers: {', '.join(GATEWAY_LOGGERS)}")


__all__ = [
    "DEFAULT_LEVEL",
    "GATEWAY_LOGGERS",
    "LEVELS",
    "HasLogging",
    "JournalFormatter",
    "LoggingSettings",
    "apply_levels",
    "level_number",
    "levels_applied",
    "load_logging",
    "setup_logging",
    "syslog_priority",
    "under_journal",
    "unknown_logger",
]
