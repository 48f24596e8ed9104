"""
Shared fixtures.  pytest-twisted runs one reactor for the whole session and
has no dirty-reactor check, so L{cleanReactor} fails any test that leaves a
connection, a listening port or a delayed call behind.
"""

from __future__ import annotations

import pytest
import pytest_twisted
from twisted.internet import defer, reactor

from aurora import Client, Registry, Server
from tests.app import IUserManager, UserManager


def _selectables():
    return {
        s for s in set(reactor.getReaders()) | set(reactor.getWriters())
        if "Waker" not in type(s).__name__
    }


@pytest.fixture(autouse=True)
def cleanReactor():
    before = _selectables()
    yield
    leftover = _selectables() - before
    calls = [c for c in reactor.getDelayedCalls() if c.active()]
    assert not leftover, f"test left connections or ports open: {leftover}"
    assert not calls, f"test left delayed calls: {calls}"


class Served:
    """A Server publishing a UserManager, and a connected Client."""

    def __init__(self) -> None:
        self.manager = UserManager()
        self.registry = Registry()
        self.registry.register(IUserManager, self.manager)
        self.server = Server(self.registry)
        self.clients: list[Client] = []

    async def start(self) -> None:
        port = await self.server.listen("tcp:0:interface=127.0.0.1")
        self.port = port.getHost().port
        self.client = self.newClient()
        self.remote = await self.client.getRegistry()

    def newClient(self, **kw) -> Client:
        client = Client(f"tcp:127.0.0.1:{self.port}", **kw)
        self.clients.append(client)
        return client

    async def stop(self) -> None:
        await defer.gatherResults([c.stop() for c in self.clients])
        await self.server.stop()


@pytest_twisted.async_yield_fixture()
async def served():
    s = Served()
    await s.start()
    yield s
    await s.stop()


def pytest_unconfigure(config):
    from tests.helpers import forgetSenders

    forgetSenders()
