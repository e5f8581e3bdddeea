"""``amr-gateway meter exchange|ratio-change``: what it sends, and its usage errors (no gateway)."""

from __future__ import annotations

import pytest

from gateway.changescli import request_body
from gateway.cli import build_parser, main
from gateway.errors import ConfigError


def test_exchange_and_ratio_change_bodies() -> None:
    args = build_parser().parse_args([
        "meter", "exchange", "m1", "--url", "http://127.0.0.1:1", "--at", "2026-12-15T10:30:00+08:00",
        "--new-serial", "3412009876", "--old-final", "energy_import_kwh=12345.67",
        "--old-final", "energy_import_kwh_t1=2345.60", "--new-initial", "energy_import_kwh=0.50",
        "--new-initial", "energy_import_kwh_t1=0.10", "--ct", "400/5", "--note", "换表"])
    route, body = request_body(args)
    assert route == "exchanges"
    assert body == {"at": "2026-12-15T10:30:00+08:00", "ct": "400/5", "note": "换表",
                    "old_final": {"energy_import_kwh": "12345.67", "energy_import_kwh_t1": "2345.60"},
                    "new_initial": {"energy_import_kwh": "0.50", "energy_import_kwh_t1": "0.10"},
                    "new_serial": "3412009876"}
    args = build_parser().parse_args([
        "meter", "ratio-change", "m1", "--url", "http://127.0.0.1:1", "--at", "2026-12-15T10:30:00+08:00",
        "--pt", "10000/100", "--register", "energy_import_kwh=1.5"])
    assert request_body(args) == ("ratio-changes", {"at": "2026-12-15T10:30:00+08:00", "pt": "10000/100",
                                                    "registers": {"energy_import_kwh": "1.5"}})


def test_a_register_without_a_value_is_a_usage_error() -> None:
    args = build_parser().parse_args([
        "meter", "ratio-change", "m1", "--url", "http://x", "--at", "2026-12-15T10:30:00+08:00", "--ct", "400/5",
        "--register", "energy_import_kwh"])
    with pytest.raises(ConfigError, match="REGISTER=VALUE"):
        request_body(args)


def test_without_a_token_or_a_gateway_it_says_what_to_do(monkeypatch: pytest.MonkeyPatch,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.delenv("AMR_API_TOKEN", raising=False)
    argv = ["meter", "ratio-change", "m1", "--url", "http://127.0.0.1:9", "--at", "2026-12-15T10:30:00+08:00",
            "--ct", "400/5", "--register", "energy_import_kwh=1"]
    assert main(argv) == 2
    assert "AMR_API_TOKEN" in capsys.readouterr().err
    monkeypatch.setenv("AMR_API_TOKEN", "not-a-real-token")
    assert main(argv) == 1                            # nothing listens on port 9 of loopback
    assert "cannot reach the gateway's API" in capsys.readouterr().err
