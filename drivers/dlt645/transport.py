"""Byte transports for DL/T 645: an RS-485 serial port (pyserial) and a TCP serial server.

Both deliver raw bytes into a buffer from the event loop itself, with no thread: the serial
port's file descriptor is watched with ``loop.add_reader`` (pyserial opens it non-blocking),
the socket is an ``asyncio.Protocol``. The driver owns framing (``codec.scan``) and timing;
a transport only sends bytes, hands over what arrived until a deadline, drops stale input
before a request, and turns OS errors into :class:`~gateway.errors.TransportError` with a
sentence that names the port and what to check.

A pseudo-terminal (tests, the simulator) ignores the baud rate and on some kernels rejects
even parity with EINVAL: on a real port that error names the port and the setting.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import termios
from typing import Protocol

import serial

from gateway.errors import TransportError


class Transport(Protocol):
    """What the DL/T 645 driver needs from a byte pipe to the meters."""

    @property
    def describe(self) -> str:
        """Human name of the endpoint for messages (``/dev/ttyS1 2400 8E1``)."""
        ...

    @property
    def is_open(self) -> bool:
        """True while the port or connection is usable."""
        ...

    async def open(self) -> None:
        """Open the port or connect; safe to call again when already open."""
        ...

    async def close(self) -> None:
        """Close; safe to repeat and after a failed open."""
        ...

    def discard_input(self) -> None:
        """Drop everything received so far (stale replies, noise) before a new request."""
        ...

    async def send(self, data: bytes) -> None:
        """Write a request."""
        ...

    async def read_some(self, deadline: float) -> bytes:
        """Bytes received so far, waiting until ``deadline`` (loop time) for at least one.

        Returns ``b""`` when the deadline passed with nothing received.
        """
        ...


class _Inbox:
    """Received bytes plus a wake-up event and a sticky transport failure."""

    def __init__(self) -> None:
        self.buffer = bytearray()
        self.event = asyncio.Event()
        self.error: TransportError | None = None

    def feed(self, data: bytes) -> None:
        self.buffer += data
        self.event.set()

    def fail(self, error: TransportError) -> None:
        self.error = error
        self.event.set()

    def clear(self) -> None:
        self.buffer.clear()
        self.event.clear()

    async def take(self, deadline: float) -> bytes:
        loop = asyncio.get_running_loop()
        while not self.buffer:
            if self.error is not None:
                raise self.error
            remaining = deadline - loop.time()
            if remaining <= 0:
                return b""
            self.event.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(remaining):
                    await self.event.wait()
        data = bytes(self.buffer)
        self.buffer.clear()
        return data


def _char_bits(bytesize: int, parity: str, stopbits: float) -> float:
    return 1 + bytesize + (0 if parity == "N" else 1) + stopbits


class SerialTransport:
    """A serial port (RS-485 adapter) read through the event loop, thread-free."""

    def __init__(
        self, port: str, baudrate: int = 2400, parity: str = "E", stopbits: float = 1, bytesize: int = 8
    ) -> None:
        self.port = port
        self.baudrate = baudrate
        self.parity = parity
        self.stopbits = stopbits
        self.bytesize = bytesize
        self._serial: serial.Serial | None = None
        self._fd: int | None = None
        self._inbox = _Inbox()

    @property
    def describe(self) -> str:
        """``/dev/ttyS1 2400 8E1``."""
        stop = int(self.stopbits) if float(self.stopbits).is_integer() else self.stopbits
        return f"{self.port} {self.baudrate} {self.bytesize}{self.parity}{stop}"

    @property
    def char_time(self) -> float:
        """Seconds per character on the wire (11 bits at 8E1)."""
        return _char_bits(self.bytesize, self.parity, self.stopbits) / self.baudrate

    @property
    def is_open(self) -> bool:
        """True while the port is open and has not failed."""
        return self._fd is not None and self._inbox.error is None

    async def open(self) -> None:
        """Open and configure the port; EINVAL becomes a TransportError naming the setting."""
        if self.is_open:
            return
        await self.close()
        try:
            ser = serial.Serial(
                port=self.port,
                baudrate=self.baudrate,
                bytesize=self.bytesize,
                parity=self.parity,
                stopbits=self.stopbits,
                timeout=0,
                write_timeout=0,
                exclusive=True,
            )
        except (serial.SerialException, termios.error, OSError, ValueError) as exc:
            raise self._open_error(exc) from exc
        self._serial = ser
        self._fd = ser.fileno()
        self._inbox = _Inbox()
        asyncio.get_running_loop().add_reader(self._fd, self._on_readable)

    def _open_error(self, exc: BaseException) -> TransportError:
        code = getattr(exc, "errno", None)
        if code is None and isinstance(exc, termios.error) and exc.args:
            code = exc.args[0]
        text = str(exc)
        if code == errno.EINVAL or "Invalid argument" in text:
            return TransportError(
                f"serial port {self.port} rejected the setting {self.baudrate} baud "
                f"{self.bytesize}{self.parity}{self.stopbits} (EINVAL): the device does not support "
                "this baud rate or parity; check the bus settings (a pseudo-terminal accepts parity N only)"
            )
        if code == errno.ENOENT:
            return TransportError(f"serial port {self.port} does not exist; check the bus 'port' setting")
        if code in (errno.EACCES, errno.EPERM):
            return TransportError(
                f"no permission to open serial port {self.port}; add the gateway's user to the "
                "'dialout' group"
            )
        if isinstance(exc, ValueError):
            return TransportError(f"serial port {self.port}: invalid setting ({exc}); check the bus settings")
        return TransportError(f"cannot open serial port {self.port} ({text}); is another program using it?")

    def _on_readable(self) -> None:
        fd = self._fd
        if fd is None:
            return
        try:
            data = os.read(fd, 4096)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._stop_reading()
            self._inbox.fail(TransportError(f"serial port {self.port} failed ({exc}); it will be reopened"))
            return
        if not data:
            self._stop_reading()
            self._inbox.fail(TransportError(f"serial port {self.port} was closed (end of file)"))
            return
        self._inbox.feed(data)

    def _stop_reading(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(Exception):
                asyncio.get_running_loop().remove_reader(self._fd)

    async def close(self) -> None:
        """Stop watching and close the port (idempotent)."""
        self._stop_reading()
        self._fd = None
        ser, self._serial = self._serial, None
        if ser is not None:
            with contextlib.suppress(Exception):
                ser.close()

    def discard_input(self) -> None:
        """Drop received bytes and the driver's unread kernel input."""
        self._inbox.clear()
        if self._serial is not None:
            with contextlib.suppress(Exception):
                self._serial.reset_input_buffer()

    async def send(self, data: bytes) -> None:
        """Write all of ``data``, waiting for the port to drain when its buffer is full."""
        fd = self._fd
        if fd is None or self._inbox.error is not None:
            raise self._inbox.error or TransportError(f"serial port {self.port} is not open")
        loop = asyncio.get_running_loop()
        view = memoryview(data)
        # Bounded: each pass writes at least one byte or waits (at most 2 s) for the port.
        for _ in range(len(data) + 1):
            if not view:
                return
            try:
                n = os.write(fd, view)
                view = view[n:]
                continue
            except BlockingIOError:
                pass
            except OSError as exc:
                raise TransportError(f"cannot write to serial port {self.port} ({exc})") from exc
            writable = loop.create_future()
            loop.add_writer(fd, writable.set_result, None)
            try:
                async with asyncio.timeout(2.0 + len(view) * self.char_time):
                    await writable
            except TimeoutError as exc:
                raise TransportError(
                    f"serial port {self.port} does not accept data (flow control stuck?)"
                ) from exc
            finally:
                loop.remove_writer(fd)
        if view:
            raise TransportError(f"could not write a whole request to serial port {self.port}")

    async def read_some(self, deadline: float) -> bytes:
        """Bytes received until ``deadline`` (``b""`` when nothing came)."""
        if self._fd is None and self._inbox.error is None:
            raise TransportError(f"serial port {self.port} is not open")
        return await self._inbox.take(deadline)


class _TcpProtocol(asyncio.Protocol):
    def __init__(self, owner: TcpTransport) -> None:
        self.owner = owner

    def data_received(self, data: bytes) -> None:
        self.owner._inbox.feed(data)

    def connection_lost(self, exc: Exception | None) -> None:
        why = f" ({exc})" if exc else ""
        self.owner._inbox.fail(
            TransportError(f"connection to {self.owner.describe} was closed{why}; it will be reopened")
        )


class TcpTransport:
    """A TCP connection to a serial device server that passes DL/T 645 frames through."""

    def __init__(self, host: str, port: int, connect_timeout: float = 5.0) -> None:
        self.host = host
        self.port = port
        self.connect_timeout = connect_timeout
        self._transport: asyncio.Transport | None = None
        self._inbox = _Inbox()

    @property
    def describe(self) -> str:
        """``host:port``."""
        return f"{self.host}:{self.port}"

    @property
    def is_open(self) -> bool:
        """True while connected."""
        return self._transport is not None and self._inbox.error is None

    async def open(self) -> None:
        """Connect (idempotent)."""
        if self.is_open:
            return
        await self.close()
        self._inbox = _Inbox()
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self.connect_timeout):
                transport, _ = await loop.create_connection(lambda: _TcpProtocol(self), self.host, self.port)
        except TimeoutError as exc:
            raise TransportError(
                f"no connection to {self.describe} within {self.connect_timeout:g} s; check the "
                "serial server's address and that it is powered"
            ) from exc
        except OSError as exc:
            raise TransportError(
                f"cannot connect to {self.describe} ({exc.strerror or exc}); check the serial "
                "server's address and port"
            ) from exc
        self._transport = transport

    async def close(self) -> None:
        """Close the connection (idempotent)."""
        t, self._transport = self._transport, None
        if t is not None:
            t.close()
            await asyncio.sleep(0)

    def discard_input(self) -> None:
        """Drop received bytes."""
        self._inbox.clear()

    async def send(self, data: bytes) -> None:
        """Write a request."""
        t = self._transport
        if self._inbox.error is not None:
            raise self._inbox.error
        if t is None or t.is_closing():
            raise TransportError(f"connection to {self.describe} is not open")
        t.write(data)

    async def read_some(self, deadline: float) -> bytes:
        """Bytes received until ``deadline`` (``b""`` when nothing came)."""
        return await self._inbox.take(deadline)
