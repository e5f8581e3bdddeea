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


@pytest.hookimpl(tryfirst=True)     # before pytest-xdist reads the xdist_group markers given here
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark every test with its directory's kind; fail collection on one without a kind or
    with a marker of the other kind. Then order and group them for parallel runs
    (:func:`order_for_workers`)."""
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
    order_for_workers(items)


#: The longest test of the suite (an emulated arm64 Debian booted under systemd-nspawn), started first.
FIRST = "tests/packaging/test_systemd_unit.py::test_unit_under_systemd[arm64]"
#: Modules whose tests share a module fixture that starts a peer (the bench's bus emulators,
#: the independent DL/T 645 server): one worker runs each such module, so it starts once.
SHARED_FIXTURE_MODULES = ("tests/integration/test_bench_emulator.py",
                          "tests/integration/test_dlt645_interop.py")


def order_for_workers(items: list[pytest.Item]) -> None:
    """The slow modules first and the rest after, each module's tests together and in their
    own order; the modules of :data:`SHARED_FIXTURE_MODULES` each an ``xdist_group``.

    ``make test`` runs the suite on several pytest-xdist workers (``--dist loadgroup``), which
    take tests in this order as they become free. Most of the suite's time is waiting (for a
    simulated day, a broker, a container's boot), not computing, so the run takes about as
    long as its longest chain: started first, the slow tests run beside the many short ones
    instead of after them. Tests that change the machine itself serialise on their own locks
    (the Debian package test on a lock file, apt on dpkg's), and what the packaging tests
    share is built once per run (tests/packaging/conftest.py). In a run without workers the
    order changes nothing a test sees.
    """
    slow_modules = {item.path for item in items if item.get_closest_marker("slow") is not None}
    for item in items:
        module = item.nodeid.split("::", 1)[0]
        if module in SHARED_FIXTURE_MODULES:
            item.add_marker(pytest.mark.xdist_group(module))
    items.sort(key=lambda item: (item.nodeid != FIRST, item.path not in slow_modules))


@pytest.fixture(autouse=True)
def _quiet_foreign_loggers() -> None:
    """pymodbus logs every failure at ERROR with frame dumps; tests read our logs only."""
    logging.getLogger("pymodbus").setLevel(logging.CRITICAL)
