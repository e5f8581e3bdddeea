"""The MQTT sink serves paho's byte-at-a-time reads from one ``recv`` of the socket."""

from __future__ import annotations

import socket
from typing import Any

import pytest

from gateway.sinks.mqtt import _RecvBuffer


class _Client:
    """Stands in for paho's client: only ``socket()`` is used."""

    def __init__(self, sock: socket.socket | None) -> None:
        self.sock = sock

    def socket(self) -> socket.socket | None:
        return self.sock


class _CountingSocket:
    """A real socket that counts its ``recv`` calls."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.calls = 0

    def recv(self, size: int) -> bytes:
        self.calls += 1
        return self.sock.recv(size)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.sock, name)


def test_packets_read_byte_by_byte_come_from_one_recv_in_order() -> None:
    a, b = socket.socketpair()
    with a, b:
        b.setblocking(False)
        counting = _CountingSocket(b)
        buf = _RecvBuffer(_Client(counting))  # type: ignore[arg-type]
        a.sendall(b"\x40\x02\x00\x01" + b"\x40\x02\x00\x02" + b"\xd0\x00")   # PUBACK 1, PUBACK 2, PINGRESP
        got = []
        for _ in range(2):                       # as paho reads a PUBACK: command, length, the rest
            got += [buf.recv(1), buf.recv(1), buf.recv(2)]
        assert buf.pending()
        got += [buf.recv(1), buf.recv(1)]
        assert b"".join(got) == b"\x40\x02\x00\x01\x40\x02\x00\x02\xd0\x00"
        assert counting.calls == 1
        assert not buf.pending()
        with pytest.raises(BlockingIOError):    # nothing more: paho stops reading
            buf.recv(1)
        a.sendall(b"\x40\x02")                   # a packet split across two reads
        assert buf.recv(1) == b"\x40" and buf.recv(1) == b"\x02"
        with pytest.raises(BlockingIOError):
            buf.recv(2)
        a.sendall(b"\x00\x03")
        assert buf.recv(2) == b"\x00\x03"
        a.close()
        assert buf.recv(1) == b""                # the peer closed: paho sees the connection lost


def test_a_closed_client_socket_is_a_connection_error() -> None:
    buf = _RecvBuffer(_Client(None))  # type: ignore[arg-type]
    with pytest.raises(ConnectionError):
        buf.recv(1)
