"""The only module of the driver that imports pymodbus: a reference transaction engine.

Why it exists beside the lean links of :mod:`drivers.modbus.transport`: pymodbus is a
mature, independent implementation. The driver can run on it (``engine="pymodbus"`` in
:func:`drivers.modbus.driver.create_driver`) to rule out our own framing when a field
device misbehaves, and the benchmarks use it as the baseline the lean engine is measured
against. It is not the default because its serial client does not keep the RS-485
inter-frame silence and costs ≈ 2× the CPU per byte (see ``transport.py``).

Containment (pymodbus renames its API between minor releases — 3.10 renamed ``slave=`` to
``device_id=``; the project pins 3.16): every pymodbus name used by the driver is here,
its exceptions are translated here into :mod:`gateway.errors`, and its logger, which logs
every failure at ERROR with frame dumps, is silenced here. pymodbus turns a cancellation
into an I/O error; :meth:`PymodbusLink.transact` re-raises ``CancelledError`` when the
calling task is being cancelled, so cancellation still cancels.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

from pymodbus.client import AsyncModbusSerialClient, AsyncModbusTcpClient
from pymodbus.exceptions import ConnectionException, ModbusException, ModbusIOException
from pymodbus.framer import FramerType

from drivers.modbus.plan import ReadRequest
from drivers.modbus.transport import device_exception, no_answer, serial_open_error
from gateway.errors import TransportError

if TYPE_CHECKING:
    from drivers.base import BusParams

logging.getLogger("pymodbus").setLevel(logging.CRITICAL)


def silence_pymodbus_logging() -> None:
    """Keep pymodbus's per-failure ERROR logs (≈ 4 KB per timeout) out of the gateway log."""
    logging.getLogger("pymodbus").setLevel(logging.CRITICAL)


class PymodbusLink:
    """A :class:`drivers.modbus.transport.Link` backed by pymodbus's async clients."""

    def __init__(self, bus: BusParams) -> None:
        self.bus = bus
        self.where = bus.port or f"{bus.host}:{bus.tcp_port}"
        self._serial = bool(bus.port)
        self._client: Any = None

    def _make_client(self) -> Any:
        bus = self.bus
        timeout = max(bus.timeout_s, 0.05)
        if bus.protocol == "modbus-rtu":
            return AsyncModbusSerialClient(
                bus.port or "", framer=FramerType.RTU, baudrate=bus.baudrate, parity=bus.parity,
                stopbits=bus.stopbits, bytesize=bus.bytesize, timeout=timeout, retries=0,
                reconnect_delay=0)
        framer = FramerType.RTU if bus.protocol == "modbus-rtu-over-tcp" else FramerType.SOCKET
        return AsyncModbusTcpClient(bus.host or "", port=bus.tcp_port or 502, framer=framer,
                                    timeout=timeout, retries=0, reconnect_delay=0)

    async def open(self) -> None:
        """Connect; safe when already connected."""
        if self._client is not None and self._client.connected:
            return
        if self._client is None:
            self._client = self._make_client()
        try:
            ok = await self._client.connect()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if self.bus.protocol == "modbus-rtu":
                raise serial_open_error(self.where, exc, self.bus.baudrate, self.bus.parity,
                                        self.bus.stopbits) from exc
            raise TransportError(f"cannot connect to {self.where}: {exc}") from exc
        if not ok:
            self._client.close()
            self._client = None
            raise TransportError(f"cannot connect to {self.where}; check that the device is up "
                                 "and the port/host is right")

    async def close(self) -> None:
        """Close; safe to repeat."""
        client, self._client = self._client, None
        if client is not None:
            client.close()

    async def transact(self, unit: int, request: ReadRequest, timeout: float) -> bytes:
        """One read through pymodbus, errors translated (see module doc)."""
        await self.open()
        client = self._client
        call = (client.read_holding_registers if request.function == 3
                else client.read_input_registers)
        try:
            async with asyncio.timeout(timeout + 0.05):
                rr = await call(request.address, count=request.count, device_id=unit)
        except TimeoutError as exc:
            raise no_answer(unit, self.where, timeout, serial=self._serial) from exc
        except ModbusException as exc:
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise asyncio.CancelledError from exc
            if isinstance(exc, ConnectionException):
                await self.close()
                raise TransportError(f"connection to {self.where} failed: {exc}; "
                                     "it will be reopened") from exc
            if isinstance(exc, ModbusIOException):
                raise no_answer(unit, self.where, timeout, serial=self._serial) from exc
            raise TransportError(f"{self.where}: {exc}") from exc
        if rr.isError():
            raise device_exception(int(getattr(rr, "exception_code", 0)), unit, self.where)
        return b"".join(int(r).to_bytes(2, "big") for r in rr.registers)
