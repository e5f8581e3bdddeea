"""gateway.logsetup: journal lines (``<N>`` priority, no timestamp) when stderr is the journal
stream systemd names, one timestamp otherwise; the ``logging`` section's checks and levels,
and a warning for a level set on an ``amr`` logger the gateway does not have."""

from __future__ import annotations

import io
import logging
import os
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.config import load_settings_from_text
from gateway.errors import ConfigError
from gateway.logsetup import (
    GATEWAY_LOGGERS,
    JournalFormatter,
    LoggingSettings,
    apply_levels,
    syslog_priority,
    under_journal,
)

BASE = "gateway: {id: g1, timezone: UTC}\nbuses: []\nmeters: []\nschedules: {}\n"


def record(level: int, msg: str, exc: BaseException | None = None) -> logging.LogRecord:
    exc_info = (type(exc), exc, exc.__traceback__) if exc is not None else None
    return logging.LogRecord("amr.poll", level, __file__, 1, msg, None, exc_info)


@pytest.mark.parametrize(("level", "prio"), [(logging.DEBUG, 7), (logging.INFO, 6), (logging.WARNING, 4),
                                            (logging.ERROR, 3), (logging.CRITICAL, 2), (25, 6), (45, 3)])
def test_priorities_are_sd_daemon_levels(level: int, prio: int) -> None:
    assert syslog_priority(level) == prio


def test_journal_lines_have_the_priority_on_every_line_and_no_timestamp() -> None:
    try:
        raise ValueError("bad frame")
    except ValueError as exc:
        text = JournalFormatter().format(record(logging.ERROR, "bus rs485-1 failed:\nsecond line", exc))
    lines = text.splitlines()
    assert lines[0] == "<3>amr.poll: bus rs485-1 failed:"
    assert lines[1] == "<3>second line"
    assert lines[-1] == "<3>ValueError: bad frame"
    assert all(line.startswith("<3>") for line in lines), lines
    assert JournalFormatter().format(record(logging.INFO, "started")) == "<6>amr.poll: started"


def test_under_journal_only_when_the_stream_is_the_one_named(tmp_path: Path) -> None:
    with (tmp_path / "journal").open("w") as journal, (tmp_path / "other").open("w") as other:
        st = os.fstat(journal.fileno())
        env = {"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}
        assert under_journal(journal, env)
        assert not under_journal(other, env)          # inherited variable, stderr redirected elsewhere
        assert not under_journal(journal, {})
        assert not under_journal(journal, {"JOURNAL_STREAM": "garbage"})
        assert not under_journal(io.StringIO(), env)  # no file descriptor at all


@pytest.fixture(name="restore_levels")
def _restore_levels() -> Iterator[None]:
    names = ("", "amr.poll", "amr.store")
    saved = {n: logging.getLogger(n).level for n in names}
    yield
    apply_levels(LoggingSettings())
    for n, level in saved.items():
        logging.getLogger(n).setLevel(level)


@pytest.mark.usefixtures("restore_levels")
def test_section_sets_module_levels_and_a_reload_without_them_resets() -> None:
    settings = load_settings_from_text(BASE + "logging:\n  level: Warning\n  levels: {amr.poll: debug}\n", env={})
    assert settings.logging == LoggingSettings(level="warning", levels={"amr.poll": "debug"})
    apply_levels(settings.logging)
    assert logging.getLogger().level == logging.WARNING
    assert logging.getLogger("amr.poll").getEffectiveLevel() == logging.DEBUG
    apply_levels(settings.logging, "error")                      # --log-level wins over the section's level
    assert logging.getLogger().level == logging.ERROR
    assert logging.getLogger("amr.poll").level == logging.DEBUG
    apply_levels(load_settings_from_text(BASE, env={}).logging)  # no section: info, modules follow the root
    assert logging.getLogger().level == logging.INFO
    assert logging.getLogger("amr.poll").level == logging.NOTSET


def test_section_errors_name_the_line() -> None:
    text = BASE + "logging:\n  level: verbose\n  levels:\n    amr.poll: loud\n    'not a name': info\n  colour: red\n"
    with pytest.raises(ConfigError) as err:
        load_settings_from_text(text, name="g.yaml", env={})
    got = [(i.line, i.message) for i in err.value.issues]
    assert (6, 'logging: level must be one of debug, info, warning, error, not "verbose"') in got, got
    assert any(line == 8 and "amr.poll must be one of" in msg for line, msg in got), got
    assert any(line == 9 and "is not a logger name" in msg for line, msg in got), got
    assert any(line == 10 and 'unknown key "colour"' in msg for line, msg in got), got


def test_the_gateway_logger_list_is_the_sources_amr_loggers() -> None:
    root = Path(__file__).resolve().parents[2]
    named = set()
    for path in [*(root / "gateway").rglob("*.py"), *(root / "drivers").rglob("*.py")]:
        named |= set(re.findall(r'getLogger\("(amr(?:\.[a-z0-9_]+)*)"\)', path.read_text(encoding="utf-8")))
    assert len(named) > 15
    assert named == set(GATEWAY_LOGGERS)


def test_a_level_for_a_logger_the_gateway_does_not_have_is_warned_of(caplog: pytest.LogCaptureFixture) -> None:
    text = BASE + ("logging:\n  levels:\n    amr.pol: debug\n    amr.poll.detail: debug\n    amr.sinks: debug\n"
                   "    amr: warning\n    pymodbus: info\n")
    with caplog.at_level(logging.WARNING, logger="amr.config"):
        settings = load_settings_from_text(text, name="g.yaml", env={})
    assert set(settings.logging.levels) == {"amr.pol", "amr.poll.detail", "amr.sinks", "amr", "pymodbus"}  # still valid
    warned = [r.getMessage() for r in caplog.records if "logging levels" in r.getMessage()]
    assert len(warned) == 2, warned
    assert warned[0].startswith('g.yaml:7: logging levels: "amr.pol" is no logger of the gateway, so its level '
                                'changes nothing (did you mean "amr.poll"?); the gateway\'s loggers: amr.api, '), warned
    assert warned[1].startswith('g.yaml:8: logging levels: "amr.poll.detail" is no logger of the gateway'), warned
