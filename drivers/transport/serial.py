"""An RS-485 serial port as a :class:`~drivers.transport.pipe.Channel`, and its pipe.

The port is opened with pyserial (which configures the line) and then read through the
event loop with ``loop.add_reader`` on its file descriptor: one callback per received
chunk, no thread, the arrival time stamped at once so the inter-frame silence counts from
the last byte. Writes are non-blocking; frames are far smaller than the kernel's tty
buffer, so a write that cannot proceed means a stuck adapter.

A pseudo-terminal (tests, the simulator) ignores the baud rate and on this kernel rejects
even parity with EINVAL; that error (and the other open failures) becomes a
TransportError naming the port, the setting and what to check.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import termios
import time

from drivers.transport.pipe import ExchangePipe, Feed, LineTiming, Lost
from gateway.errors import TransportError

_WRITE_LIMIT_S = 0.5


def char_bits(parity: str = "E", stopbits: float = 1, bytesize: int = 8) -> float:
    """Bits per character on the wire: start + data + parity + stop (8E1 = 11, 8N1 = 10)."""
    return 1 + bytesize + (0 if parity == "N" else 1) + stopbits


def char_time(baudrate: int, parity: str = "E", stopbits: float = 1, bytesize: int = 8) -> float:
    """Seconds one character takes on the line (start, data, parity and stop bits at ``baudrate``)."""
    return char_bits(parity, stopbits, bytesize) / max(1, baudrate)


def line_name(port: str, baudrate: int, parity: str, stopbits: float, bytesize: int) -> str:
    """``/dev/ttyS1 2400 8E1`` (how messages name a serial line)."""
    stop = int(stopbits) if float(stopbits).is_integer() else stopbits
    return f"{port} {baudrate} {bytesize}{parity}{stop}"


def serial_open_error(port: str, exc: BaseException, baudrate: int, parity: str,
                      stopbits: float, bytesize: int = 8) -> TransportError:
    """Translate a failure to open or configure a serial port into a sentence to act on."""
    code = getattr(exc, "errno", None)
    if code is None and isinstance(exc, termios.error) and exc.args:
        code = exc.args[0]
    text = str(exc)
    setting = line_name(port, baudrate, parity, stopbits, bytesize).split(" ", 1)[1]
    if code == errno.ENOENT or "No such file" in text:
        return TransportError(f"serial port {port} does not exist; check the port's name (`port:` of "
                              "the bus, or --serial of read/scan; ls /dev/ttyS* /dev/ttyUSB* "
                              "/dev/serial/by-id/)")
    if code in (errno.EACCES, errno.EPERM) or "Permission denied" in text:
        return TransportError(f"permission denied opening serial port {port}; add the gateway's "
                              "user to the dialout group")
    if code == errno.EBUSY or "busy" in text.lower():
        return TransportError(f"serial port {port} is busy; another program holds it")
    if code == errno.EINVAL or "Invalid argument" in text:
        return TransportError(
            f"serial port {port} rejected the setting {setting.replace(' ', ' baud ')} (EINVAL): the "
            "port does not support this baud rate or parity; check the bus settings (a "
            "pseudo-terminal accepts parity N only)")
    if isinstance(exc, ValueError):
        return TransportError(f"serial port {port}: invalid setting ({exc}); check the bus settings")
    return TransportError(f"cannot open serial port {port} ({text}); is another program using it?")


class SerialChannel:
    """A serial port read through the event loop (``add_reader``), written non-blocking."""

    def __init__(self, port: str, baudrate: int, parity: str = "E", stopbits: float = 1,
                 bytesize: int = 8) -> None:
        self.port = port
        self.baudrate = baudrate
        self.parity = parity
        self.stopbits = stopbits
        self.bytesize = bytesize
        self._serial: object | None = None
        self._fd = -1
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def describe(self) -> str:
        """``/dev/ttyS1 9600 8E1``."""
        return line_name(self.port, self.baudrate, self.parity, self.stopbits, self.bytesize)

    async def open(self, feed: Feed, lost: Lost) -> None:
        """Open and configure the port, then deliver every received chunk to ``feed``."""
        import serial  # pyserial: only this channel needs it

        try:
            ser = serial.Serial(
                self.port, baudrate=self.baudrate, parity=self.parity, stopbits=self.stopbits,
                bytesize=self.bytesize, timeout=0, write_timeout=0, exclusive=True)
        except (serial.SerialException, termios.error, OSError, ValueError) as exc:
            raise serial_open_error(self.port, exc, self.baudrate, self.parity, self.stopbits,
                                    self.bytesize) from exc
        self._serial = ser
        self._fd = fd = ser.fileno()
        os.set_blocking(fd, False)
        with contextlib.suppress(Exception):
            ser.reset_input_buffer()
        loop = self._loop = asyncio.get_running_loop()

        def readable() -> None:
            try:
                data = os.read(fd, 4096)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                self.close()
                lost(TransportError(f"serial port {self.port} failed ({exc.strerror}); "
                                    "it will be reopened"))
                return
            if not data:
                self.close()
                lost(TransportError(f"serial port {self.port} was closed (end of file); "
                                    "it will be reopened"))
                return
            feed(data, time.monotonic())

        loop.add_reader(fd, readable)

    def write(self, data: bytes) -> None:
        """Write a whole frame; a port that takes nothing for 0.5 s is a TransportError."""
        if self._fd < 0:
            raise TransportError(f"serial port {self.port} is not open; it will be reopened")
        view = memoryview(data)
        deadline = time.monotonic() + _WRITE_LIMIT_S
        for _ in range(10_000):            # bounded: each pass writes or waits 0.5 ms
            if not view:
                return
            try:
                n = os.write(self._fd, view)
            except BlockingIOError:
                if time.monotonic() > deadline:
                    break
                time.sleep(0.0005)
                continue
            except OSError as exc:
                raise TransportError(f"writing to serial port {self.port} failed ({exc.strerror}); "
                                     "it will be reopened") from exc
            view = view[n:]
        raise TransportError(f"serial port {self.port} does not accept data (flow control "
                             "stuck?); check the adapter")

    def close(self) -> None:
        """Stop reading and close the port; safe to repeat."""
        if self._fd >= 0 and self._loop is not None:
            with contextlib.suppress(Exception):
                self._loop.remove_reader(self._fd)
        self._fd = -1
        ser, self._serial = self._serial, None
        if ser is not None:
            with contextlib.suppress(Exception):
                ser.close()  # type: ignore[attr-defined]


def serial_pipe(port: str, baudrate: int, parity: str = "E", stopbits: float = 1, bytesize: int = 8, *,
                silence_s: float = 0.0, turnaround_s: float = 0.0) -> ExchangePipe:
    """An RS-485 pipe: the port at its settings, ``silence_s`` kept before every frame.

    The character time comes from the settings; stale bytes are drained after the line has
    been quiet for the silence time (at least 2 ms).
    """
    timing = LineTiming(char_s=char_time(baudrate, parity, stopbits, bytesize), silence_s=silence_s,
                        turnaround_s=turnaround_s, drain_quiet_s=max(silence_s, 0.002))
    return ExchangePipe(SerialChannel(port, baudrate, parity, stopbits, bytesize), timing)
