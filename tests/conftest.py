"""Shared pytest configuration: the test kinds (markers) and fixtures that every test uses.

Every test is exactly one kind, given by its directory:

* ``tests/unit/`` → ``unit``: in one process, no peer beyond files on disk (SQLite in a
  temporary directory); fast;
* ``tests/integration/`` → ``integration``: talks to a real peer on loopback (a simulator on
  a pty or TCP port, mosquitto, VictoriaMetrics, the gateway as a process);
* ``tests/e2e/`` → ``integration`` and ``slow``: the whole gateway process against all peers;
* ``tests/packaging/`` → ``integration``: the wheel and the Debian package built and installed.

Tests that take tens of seconds also carry ``slow`` (``pytestmark = pytest.mark.slow`` in the
module, or on the test). ``make test`` runs every kind; ``-m unit`` or ``-m "not slow"`` pick a
quick subset while working. Collection fails on a test outside these directories or one whose
own markers contradict its directory, so no test can go unclassified.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
KIND_BY_DIRECTORY = {"unit": "unit", "integration": "integration", "e2e": "integration",
                     "packaging": "integration"}
SLOW_DIRECTORIES = {"e2e"}
KINDS = ("unit", "integration")


def kind_of(path: Path) -> tuple[str | None, bool]:
    """The kind (``unit``/``integration``) a test file's directory gives it, and whether the
    directory makes it ``slow``; (None, False) for a file outside the kinds' directories."""
    try:
        top = path.resolve().relative_to(TESTS).parts[0]
    except (ValueError, IndexError):
        return None, False
    return KIND_BY_DIRECTORY.get(top), top in SLOW_DIRECTORIES


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark every test with its directory's kind; fail collection on one without a kind or
    with a marker of the other kind."""
    wrong: list[str] = []
    for item in items:
        kind, slow = kind_of(item.path)
        if kind is None:
            wrong.append(f"{item.nodeid}: outside tests/unit, tests/integration, tests/e2e and tests/packaging")
            continue
        other = {m.name for m in item.iter_markers() if m.name in KINDS} - {kind}
        if other:
            wrong.append(f"{item.nodeid}: marked {', '.join(sorted(other))} but lives in a {kind} directory")
            continue
        item.add_marker(kind)
        if slow:
            item.add_marker("slow")
    if wrong:
        raise pytest.UsageError("tests without exactly one kind (unit or integration); move them:\n  "
                                + "\n  ".join(wrong))


@pytest.fixture(autouse=True)
def _quiet_foreign_loggers() -> None:
    """pymodbus logs every failure at ERROR with frame dumps; tests read our logs only."""
    logging.getLogger("pymodbus").setLevel(logging.CRITICAL)
