"""The gateway's error taxonomy: one small tree, so every caller knows what to do next.

::

    AmrError
    ├── ConfigError          bad configuration; at start or reload; never retried
    ├── TransportError       port or socket failed: reopen with jittered backoff
    │   └── ReadTimeout      no (complete) reply in time           → quality "timeout"
    ├── FrameError           bad CRC/checksum, garbage, wrong address: resynchronise,
    │   │                    keep the port                           → quality "crc_error"
    │   └── WrongAddressError a reply from another meter/unit id     → quality "crc_error"
    ├── DeviceException      the meter answered "no" (Modbus exception, DL/T 645 abnormal
    │                        reply): don't reconnect                 → quality "exception"
    ├── DecodeError          one point's bytes are not a value: that point is bad, the
    │                        others stand                            → quality "invalid"
    ├── StoreError           the local store refused a write (disk full, cap reached)
    └── SinkError            a sink's peer refused a batch; ``action`` says keep,
                             throttle or reject

Messages are sentences that tell the user what to do. Foreign libraries' exceptions are
translated where the library is imported (pyserial in ``drivers/transport/serial.py``,
paho in the MQTT sink, influxdb-client in the InfluxDB sink) so nothing above sees them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


class AmrError(Exception):
    """Base of every error the gateway raises on purpose."""


@dataclass(frozen=True, slots=True)
class ConfigIssue:
    """One problem in a configuration or profile file, with where it is and what to do."""

    file: str
    line: int | None
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line is not None else self.file
        return f"{where}: {self.message}"


class ConfigError(AmrError):
    """The configuration is invalid; carries every issue found, not just the first."""

    def __init__(self, issues: list[ConfigIssue] | str) -> None:
        if isinstance(issues, str):
            issues = [ConfigIssue("<config>", None, issues)]
        self.issues: list[ConfigIssue] = list(issues)
        super().__init__("\n".join(str(i) for i in self.issues))


class TransportError(AmrError):
    """The serial port or socket failed (cannot open, closed, reset); reopen with backoff."""


class ReadTimeout(TransportError):
    """The meter did not answer (completely) within the timeout."""


class FrameError(AmrError):
    """A reply was malformed: bad CRC/checksum, bad length, garbage on the line."""


class WrongAddressError(FrameError):
    """A well-formed reply came from another address or unit id than the one asked."""


class DeviceException(AmrError):
    """The meter answered with an exception / abnormal reply: it refused the request."""

    def __init__(self, code: int, name: str, detail: str = "") -> None:
        self.code = code
        self.name = name
        text = f"device exception {code:#04x} ({name})"
        super().__init__(f"{text}: {detail}" if detail else text)


class DecodeError(AmrError):
    """One value could not be decoded (missing data marker, non-BCD digit, NaN)."""


class StoreError(AmrError):
    """The local store could not take a write (disk full, storage cap reached)."""


SinkAction = Literal["keep", "throttle", "reject"]


class SinkError(AmrError):
    """A sink's peer did not take a batch.

    ``keep``: peer down or auth failure, retry the same batch later;
    ``throttle``: retry after ``retry_after`` seconds;
    ``reject``: the peer will never take these readings; skip them and count them.
    """

    def __init__(self, message: str, action: SinkAction, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.action: SinkAction = action
        self.retry_after = retry_after


def quality_for(error: BaseException) -> str:
    """Map an error raised by a driver to the reading quality the SPEC names."""
    if isinstance(error, ReadTimeout):
        return "timeout"
    if isinstance(error, FrameError):
        return "crc_error"
    if isinstance(error, DeviceException):
        return "exception"
    if isinstance(error, DecodeError):
        return "invalid"
    return "timeout"
