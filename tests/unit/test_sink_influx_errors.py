"""InfluxDB error translation: HTTP statuses to keep / throttle / reject, Retry-After parsing."""

from __future__ import annotations

import email.utils

import urllib3.exceptions
from influxdb_client.rest import ApiException
from urllib3 import HTTPHeaderDict

from gateway.errors import SinkError
from gateway.sinks.base import SinkAuthError
from gateway.sinks.influx import classify, retry_after_seconds

URL = "http://tsdb:8086"


def api_error(status: int, body: str = "", headers: dict[str, str] | None = None) -> ApiException:
    """An ApiException as influxdb-client raises it."""
    exc = ApiException(status=status, reason="Reason")  # type: ignore[no-untyped-call]
    exc.body = body
    exc.headers = HTTPHeaderDict(headers or {})
    return exc


def test_400_and_422_are_rejections_with_the_servers_message() -> None:
    for status in (400, 422):
        result = classify(api_error(status, '{"code":"invalid","message":"unable to parse line 3"}'), URL)
        assert isinstance(result, str) and "unable to parse line 3" in result and str(status) in result


def test_401_and_403_are_kept_as_auth_failures() -> None:
    for status in (401, 403):
        result = classify(api_error(status), URL)
        assert isinstance(result, SinkAuthError) and result.action == "keep"


def test_429_and_503_throttle_with_retry_after() -> None:
    result = classify(api_error(429, headers={"Retry-After": "7"}), URL)
    assert isinstance(result, SinkError) and result.action == "throttle" and result.retry_after == 7.0
    result = classify(api_error(503), URL)
    assert isinstance(result, SinkError) and result.action == "throttle" and result.retry_after is None


def test_other_statuses_and_transport_errors_are_kept() -> None:
    for exc in (api_error(500), api_error(502), urllib3.exceptions.ProtocolError("reset"),
                ConnectionRefusedError("refused")):
        result = classify(exc, URL)
        assert isinstance(result, SinkError) and result.action == "keep" and not isinstance(result, SinkAuthError)


def test_retry_after_forms() -> None:
    assert retry_after_seconds(None) is None
    assert retry_after_seconds("garbage") is None
    assert retry_after_seconds(" 12 ") == 12.0
    assert retry_after_seconds("-3") == 0.0
    date = email.utils.formatdate(1_000_030.0, usegmt=True)
    assert retry_after_seconds(date, now=1_000_000.0) == 30.0
