"""gateway.ports.listen_problem: why an address cannot be listened on, and what to change,
for the real errors the kernel and the resolver give (a held port, an address this machine
does not have, a name that does not resolve)."""

from __future__ import annotations

import socket

import pytest

from gateway.api.server import bind_listener
from gateway.ports import listen_problem


def bind_error(host: str, port: int) -> OSError:
    """The OSError binding ``host:port`` gives (the test fails when the bind succeeds)."""
    with pytest.raises(OSError) as err:
        bind_listener(host, port).close()
    return err.value


def test_a_held_port_names_the_other_program_and_the_setting() -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        text = listen_problem("127.0.0.1", port, bind_error("127.0.0.1", port), "api.listen")
    assert text == (f"cannot listen on 127.0.0.1:{port}: another program holds that port (another gateway "
                    "or demo?); stop it, or give another port in api.listen")


def test_an_address_of_another_machine_says_to_give_one_of_this_machine() -> None:
    text = listen_problem("192.0.2.7", 8080, bind_error("192.0.2.7", 8080), "--listen")  # TEST-NET-1
    assert text.startswith("cannot listen on 192.0.2.7:8080: 192.0.2.7 is not an address of this machine; "
                           "give one of its addresses in --listen, e.g. 127.0.0.1:8080"), text


def test_a_name_that_does_not_resolve_is_said_as_such() -> None:
    text = listen_problem("no-such-host.invalid", 8080, bind_error("no-such-host.invalid", 8080), "api.listen")
    assert text.startswith("cannot listen on no-such-host.invalid:8080: the host name 'no-such-host.invalid' "
                           "does not resolve; give an address of this machine in api.listen"), text
