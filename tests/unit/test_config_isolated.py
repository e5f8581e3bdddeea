"""A large configuration parsed in a child process gives the same settings and issues."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.config import load_settings
from gateway.config_isolated import load_settings_isolated
from gateway.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]


def test_a_child_parse_gives_the_same_settings() -> None:
    example = ROOT / "config" / "gateway.example.yaml"
    here = load_settings(example)
    there = load_settings_isolated(example, threshold=1)    # force the child
    assert there == here and len(there.meters) > 1


def test_a_child_parse_reports_the_same_issues(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("gateway: {id: g1, timezone: Mars/Olympus}\nbuses: []\nmeters: []\n", encoding="utf-8")
    with pytest.raises(ConfigError) as here:
        load_settings(path)
    with pytest.raises(ConfigError) as there:
        load_settings_isolated(path, threshold=1)
    assert there.value.issues == here.value.issues and str(there.value) == str(here.value)
