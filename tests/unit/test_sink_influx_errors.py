"""InfluxDB error translation: HTTP statuses to keep / throttle / reject, Retry-After parsing.

Both writers are covered: the built-in one raises :class:`InfluxHTTPError` itself, the
influxdb-client adapter converts ``ApiException`` / urllib3 errors with ``client_error``;
``classify`` must give the same answer for the same HTTP outcome either way.
"""

from __future__ import annotations

import email.utils
import http.client
from collections.abc import Callable

import pytest
import urllib3.exceptions
from influxdb_client.rest import ApiException
from urllib3 import HTTPHeaderDict

from gateway.errors import SinkError
from gateway.sinks.base import SinkAuthError
from gateway.sinks.influx import classify, client_error, retry_after_seconds
from gateway.sinks.influx_http import InfluxHTTPError

URL = "http://tsdb:8086"

ErrorFactory = Callable[[int, str, "dict[str, str] | None"], BaseException]


def api_error(status: int, body: str = "", headers: dict[str, str] | None = None) -> ApiException:
    """An ApiException as influxdb-client raises it."""
    exc = ApiException(status=status, reason="Reason")  # type: ignore[no-untyped-call]
    exc.body = body
    exc.headers = HTTPHeaderDict(headers or {})
    return exc


def builtin_error(status: int, body: str = "", headers: dict[str, str] | None = None) -> BaseException:
    """What the built-in writer raises for a non-2xx answer."""
    return InfluxHTTPError(status, "Reason", body, (headers or {}).get("Retry-After"))


def client_adapter_error(status: int, body: str = "", headers: dict[str, str] | None = None) -> BaseException:
    """What the influxdb-client adapter raises for a non-2xx answer."""
    return client_error(api_error(status, body, headers))


@pytest.fixture(params=[builtin_error, client_adapter_error], ids=["builtin", "influxdb-client"])
def error(request: pytest.FixtureRequest) -> ErrorFactory:
    """An HTTP error as one of the two writers raises it."""
    factory: ErrorFactory = request.param
    return factory


def test_400_and_422_are_rejections_with_the_servers_message(error: ErrorFactory) -> None:
    for status in (400, 422):
        result = classify(error(status, '{"code":"invalid","message":"unable to parse line 3"}', None), URL)
        assert isinstance(result, str) and "unable to parse line 3" in result and str(status) in result
        assert result == f"HTTP {status} Reason: unable to parse line 3"


def test_401_and_403_are_kept_as_auth_failures(error: ErrorFactory) -> None:
    for status in (401, 403):
        result = classify(error(status, "", None), URL)
        assert isinstance(result, SinkAuthError) and result.action == "keep"


def test_429_and_503_throttle_with_retry_after(error: ErrorFactory) -> None:
    result = classify(error(429, "", {"Retry-After": "7"}), URL)
    assert isinstance(result, SinkError) and result.action == "throttle" and result.retry_after == 7.0
    result = classify(error(503, "", None), URL)
    assert isinstance(result, SinkError) and result.action == "throttle" and result.retry_after is None


def test_other_statuses_are_kept(error: ErrorFactory) -> None:
    for status in (500, 502, 413):
        result = classify(error(status, "", None), URL)
        assert isinstance(result, SinkError) and result.action == "keep" and not isinstance(result, SinkAuthError)


@pytest.mark.parametrize("exc", [
    client_error(urllib3.exceptions.ProtocolError("reset")),
    client_error(urllib3.exceptions.NewConnectionError(None, "refused")),  # type: ignore[arg-type]
    ConnectionRefusedError("refused"),
    TimeoutError("timed out"),
    http.client.RemoteDisconnected("closed"),
    http.client.IncompleteRead(b"", 10),
], ids=["urllib3-protocol", "urllib3-connect", "refused", "timeout", "remote-disconnected", "incomplete"])
def test_transport_errors_of_either_writer_are_kept(exc: BaseException) -> None:
    result = classify(exc, URL)
    assert isinstance(result, SinkError) and result.action == "keep" and not isinstance(result, SinkAuthError)
    assert "cannot reach InfluxDB" in str(result)


def test_client_error_converts_bytes_bodies_and_leaves_others_alone() -> None:
    converted = client_error(api_error(400, headers={"Retry-After": "3"}))
    assert isinstance(converted, InfluxHTTPError) and converted.retry_after == "3"
    exc = api_error(400)
    exc.body = b'{"message":"bad"}'
    converted = client_error(exc)
    assert isinstance(converted, InfluxHTTPError) and converted.body == '{"message":"bad"}'
    other = ValueError("x")
    assert client_error(other) is other


def test_retry_after_forms() -> None:
    assert retry_after_seconds(None) is None
    assert retry_after_seconds("garbage") is None
    assert retry_after_seconds(" 12 ") == 12.0
    assert retry_after_seconds("-3") == 0.0
    date = email.utils.formatdate(1_000_030.0, usegmt=True)
    assert retry_after_seconds(date, now=1_000_000.0) == 30.0
