"""The ``store`` section's keys for the writer and memory bounds (commit_interval and its
older spelling commit_interval_ms, min_free, max_pending)."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.config import load_settings_from_text
from gateway.errors import ConfigError

SITE = """\
gateway: {id: gw1}
buses:
  - {id: lan, type: tcp, host: 127.0.0.1, protocol: modbus-tcp}
meters:
  - {id: m1, customer: C1, bus: lan, address: 1, profile: simulator}
schedules:
  slow: {every: 15m}
"""


def store_of(tmp_path: Path, section: str) -> object:
    return load_settings_from_text(SITE + section, "gw.yaml", tmp_path, env={}).store


def test_defaults_bound_commits_at_one_second(tmp_path: Path) -> None:
    s = load_settings_from_text(SITE, "gw.yaml", tmp_path, env={}).store
    assert (s.commit_interval_s, s.min_free_bytes, s.max_pending) == (1.0, 32_000_000, 20_000)


@pytest.mark.parametrize(("section", "seconds"), [
    ("store: {commit_interval: 250ms}", 0.25),
    ("store: {commit_interval: 2s}", 2.0),
    ("store: {commit_interval_ms: 100}", 0.1),      # the older spelling, still read
])
def test_commit_interval_and_its_older_spelling(tmp_path: Path, section: str, seconds: float) -> None:
    assert store_of(tmp_path, section).commit_interval_s == seconds  # type: ignore[attr-defined]


def test_memory_and_free_space_bounds(tmp_path: Path) -> None:
    s = store_of(tmp_path, "store: {min_free: 5MB, max_pending: 500}")
    assert (s.min_free_bytes, s.max_pending) == (5_000_000, 500)  # type: ignore[attr-defined]


@pytest.mark.parametrize(("section", "message"), [
    ("store: {commit_interval: 1s, commit_interval_ms: 20}",
     "gw.yaml:8: store: commit_interval_ms is the older spelling of commit_interval; keep only commit_interval"),
    ("store: {commit_interval: 5}", "gw.yaml:8: store: commit_interval must be a duration with a unit"),
    ("store: {max_pending: 10}", "gw.yaml:8: store: max_pending must be"),
])
def test_bad_store_keys_name_the_line(tmp_path: Path, section: str, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        store_of(tmp_path, section)
    assert message in str(err.value)
