"""The one transport layer every protocol rides: byte pipes with ``exchange`` semantics.

* :mod:`drivers.transport.pipe` — :class:`~drivers.transport.pipe.BytePipe` (the typed
  interface), :class:`~drivers.transport.pipe.ExchangePipe` (one request at a time: line
  timing, reply window, matching, the drain rule), the matcher protocol and its
  :class:`~drivers.transport.pipe.Cut` verdicts;
* :mod:`drivers.transport.serial` — an RS-485 port (:func:`~drivers.transport.serial.serial_pipe`);
* :mod:`drivers.transport.tcp` — a TCP stream to a serial server (RTU over TCP, DL/T 645;
  :func:`~drivers.transport.tcp.tcp_pipe`) and a tagged stream for Modbus TCP
  (:class:`~drivers.transport.tcp.TaggedTcpPipe`);
* :mod:`drivers.transport.precise` and :mod:`drivers.transport.buckets` — the timers
  those use.

A protocol keeps only its framing: how to tell its reply is complete, its CRC or checksum,
and which unit, address or transaction the reply belongs to. This package imports nothing
from the gateway but :mod:`gateway.errors`.
"""
