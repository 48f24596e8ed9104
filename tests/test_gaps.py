"""
Behaviour that was once uncovered or wrong, found by reading the code: an
upstream that upgrades its interfaces, held model updates, values that do
not decode, replays that find nothing, a stock PB observer, concurrent
lookups.
"""

from __future__ import annotations

import pytest
import pytest_twisted
from twisted.internet import defer
from zope.interface import Interface, implementer
from zope.interface.interface import InterfaceClass, Method

from aurora import Client, Manager, Registry, Server, errors, signals
from tests.helpers import SignalLog

QUIET = dict(heartbeat=None, reconnectDelay=0.05, maxReconnectDelay=0.2)


def _service(*methods: str) -> InterfaceClass:
    # A module no process here imports: the client only learns it from the
    # server's description, as a relay or the CLI does.
    return InterfaceClass(
        "IService", (Interface,), {m: Method(m) for m in methods},
        __module__="upgraded.app")


class Service(Manager):
    def ping(self):
        return "pong"

    def version(self):
        return self.v

    def added(self):
        return "new in v2"


async def _serve(iface, v, port=0):
    registry = Registry()
    service = implementer(iface)(type("Service", (Service,), {"v": v}))()
    registry.register(iface, service)
    server = Server(registry)
    listening = await server.listen(f"tcp:{port}:interface=127.0.0.1")
    return server, listening.getHost().port


@pytest_twisted.ensureDeferred
async def test_anUpgradedUpstreamsNewMethodsAreSeenAfterReconnect():
    """
    A long-running client (a relay, the CLI) learned an interface from its
    server; the server is upgraded with a method more.  After the reconnect
    the wrapper the application holds, and a new one, both offer it.
    """
    v1, v2 = _service("ping", "version"), _service("ping", "version", "added")
    server, port = await _serve(v1, 1)
    client = Client(f"tcp:127.0.0.1:{port}", **QUIET)
    log = SignalLog(signals.connected, client)
    try:
        registry = await client.getRegistry()
        held = await registry.getManager("upgraded.app.IService")
        assert await held.version() == 1
        with pytest.raises(errors.NoSuchMethod):
            held.added
        back = log.next()
        await server.stop()
        server, _ = await _serve(v2, 2, port)
        await back
        assert await held.version() == 2
        assert await held.added() == "new in v2"
        again = await registry.getManager("upgraded.app.IService")
        assert await again.added() == "new in v2"
    finally:
        log.close()
        await client.stop()
        await server.stop()
