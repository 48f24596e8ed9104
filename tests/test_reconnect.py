"""
Reconnection against a real server process killed with SIGKILL and
restarted on the same port, and a silent partition through a proxy.
"""

from __future__ import annotations

import gc
import weakref

import pytest
import pytest_twisted
from twisted.internet import defer, reactor

from aurora import Client, Registry, Server, errors, signals
from aurora.remote import referenceError
from tests.app import IAdmin, IUserManager, UserManager
from tests.helpers import PartitionProxy, ServerProcess, SignalLog

FAST = dict(heartbeat=0.5, reconnectDelay=0.05, maxReconnectDelay=0.2)


class Session:
    """A client of a server process, and the signals it sends."""

    def __init__(self, server: ServerProcess, **kw) -> None:
        self.server = server
        self.client = Client(f"tcp:127.0.0.1:{server.port}", **{**FAST, **kw})
        self.connected = SignalLog(signals.connected, self.client)
        self.disconnected = SignalLog(signals.disconnected, self.client)

    async def connect(self):
        """The registry; the signal logs start empty after the first connect."""
        registry = await self.client.getRegistry()
        assert len(self.connected.events) == 1  # the first connection
        self.connected.events.clear()
        return registry

    async def restart(self, *args: str) -> None:
        """
        SIGKILL the server, wait for the client to notice, start it again.
        L{reconnected} then waits for the client to be back: armed here,
        since it may be back before this returns.
        """
        lost = self.disconnected.next()
        self._back = self.connected.next()
        await self.server.kill()
        await lost
        self.server = await ServerProcess.start(self.server.port, *args)

    async def reconnected(self) -> None:
        await self._back

    async def close(self) -> None:
        self.connected.close()
        self.disconnected.close()
        await self.client.stop()
        await self.server.kill()


@pytest_twisted.async_yield_fixture()
async def session():
    s = Session(await ServerProcess.start())
    yield s
    await s.close()


@pytest_twisted.ensureDeferred
async def test_sameObjectsWorkAfterServerRestart(session):
    registry = await session.connect()
    users = await registry.getManager(IUserManager)
    admin = await users.getAdmin()
    alice = await users.getModel("alice")
    assert alice.online is False
    changes = SignalLog(signals.changed, alice)
    try:
        await session.restart("--online", "alice")
        # While the server was down, calls failed at once (checked in
        # test_callsDuringOutageFailFast); now wait for the resync.
        await session.reconnected()
        assert session.connected.events == [{"registry": registry}]
        assert len(session.disconnected.events) == 1
        assert await registry.getManager(IUserManager) is users
        assert await users.echo("again") == "again"
        assert await admin.ping() == "pong"
        # A change made while the client was away arrives as `changed`.
        assert alice.online is True
        assert changes.events == [{"name": "online", "value": True, "old": False}]
        # And the mirror follows the new server from now on.
        following = changes.next()
        await users.setOnline("alice", False)
        await following
        assert alice.online is False
    finally:
        changes.close()


@pytest_twisted.ensureDeferred
async def test_callsDuringOutageFailFast(session):
    registry = await session.connect()
    users = await registry.getManager(IUserManager)
    lost = session.disconnected.next()
    await session.server.kill()
    await lost
    assert not session.client.connected
    started = reactor.seconds()
    with pytest.raises(errors.ConnectionLost) as e:
        await users.echo(1)
    # At once, not after the 30 s call deadline (the bound is loose for a
    # loaded machine; it is behaviour, not speed, that is checked).
    assert reactor.seconds() - started < 5.0
    assert str(session.server.port) in str(e.value)
    with pytest.raises(errors.ConnectionLost):
        await registry.getManager(IAdmin)
    session.server = await ServerProcess.start(session.server.port)
    await session.client.whenConnected()
    assert await users.echo(2) == 2


@pytest_twisted.ensureDeferred
async def test_callInFlightFailsWithConnectionLost(session):
    registry = await session.connect()
    users = await registry.getManager(IUserManager)
    pending = users.slowEcho("never", 60)
    await users.echo(0)  # the slow call has reached the server
    await session.server.kill()
    with pytest.raises(errors.ConnectionLost):
        await pending
    session.server = await ServerProcess.start(session.server.port)
    await session.client.whenConnected()


@pytest_twisted.ensureDeferred
async def test_goneInterfaceFailsThenRecovers(session):
    registry = await session.connect()
    admin = await registry.getManager(IAdmin)
    await session.restart("--no-admin")
    await session.reconnected()
    with pytest.raises(errors.UnknownInterface, match="tests.app.IAdmin"):
        await admin.ping()
    assert isinstance(referenceError(admin), errors.UnknownInterface)
    await session.restart()
    await session.reconnected()
    assert referenceError(admin) is None
    assert await admin.ping() == "pong"
    assert await registry.getManager(IAdmin) is admin


@pytest_twisted.ensureDeferred
async def test_noReplayMirrorBecomesStale(session):
    registry = await session.connect()
    users = await registry.getManager(IUserManager)
    opened = await users.openModel("bob")
    await session.restart()
    await session.reconnected()
    assert isinstance(referenceError(opened), errors.StaleReference)
    assert "noReplay" in str(referenceError(opened))
    with pytest.raises(errors.StaleReference):
        await users.echo(opened)


@pytest_twisted.ensureDeferred
async def test_listedModelsMatchedByKeyField(session):
    registry = await session.connect()
    users = await registry.getManager(IUserManager)
    alice, bob = await users.listModels()
    assert (alice.name, bob.name) == ("alice", "bob")
    await session.restart("--reverse", "--online", "bob")
    await session.reconnected()
    assert (alice.name, alice.online) == ("alice", False)
    assert (bob.name, bob.online) == ("bob", True)
    following = SignalLog(signals.changed, alice)
    try:
        arrived = following.next()
        await users.setOnline("alice", True)
        await arrived
        assert alice.online is True and bob.online is True
    finally:
        following.close()


@pytest_twisted.ensureDeferred
async def test_droppedWrapperIsCollected(session):
    registry = await session.connect()
    users = await registry.getManager(IUserManager)
    admin = weakref.ref(await users.getAdmin())
    mirror = weakref.ref(await users.getModel("alice"))
    # inlineCallbacks keeps the last awaited Deferred (and its result) until
    # the next await.
    await users.echo(0)
    gc.collect()
    assert admin() is None and mirror() is None
    assert session.client._tracker.live() == [users]


# -- a silent partition, through a proxy that drops bytes without closing


@pytest_twisted.async_yield_fixture()
async def partitioned():
    manager = UserManager()
    registry = Registry()
    registry.register(IUserManager, manager)
    server = Server(registry)
    port = (await server.listen("tcp:0:interface=127.0.0.1")).getHost().port
    proxy = PartitionProxy(port)
    proxyPort = await proxy.start()
    client = Client(f"tcp:127.0.0.1:{proxyPort}", heartbeat=0.2,
                    reconnectDelay=0.05, maxReconnectDelay=0.2)
    yield manager, proxy, client
    await client.stop()
    await proxy.stop()
    await server.stop()


@pytest_twisted.ensureDeferred
async def test_heartbeatDetectsSilentPartitionAndRecovers(partitioned):
    manager, proxy, client = partitioned
    registry = await client.getRegistry()
    users = await registry.getManager(IUserManager)
    disconnected = SignalLog(signals.disconnected, client)
    connected = SignalLog(signals.connected, client)
    try:
        lost = disconnected.next()
        proxy.partitioned = True
        started = reactor.seconds()
        await lost
        detection = reactor.seconds() - started
        # The heartbeat's timeout is 0.35 s; TCP alone would not notice for
        # minutes.  Loose bound for a loaded machine: behaviour, not speed.
        assert detection < 5.0, detection
        with pytest.raises(errors.ConnectionLost):
            await users.echo(1)
        back = connected.next()
        proxy.partitioned = False
        await back
        assert await users.echo(2) == 2
        assert len(disconnected.events) == 1
    finally:
        disconnected.close()
        connected.close()


@pytest_twisted.ensureDeferred
async def test_serverDropsSilentClientAndItsObservers(partitioned):
    manager, proxy, client = partitioned
    registry = await client.getRegistry()
    users = await registry.getManager(IUserManager)
    mirror = await users.getModel("alice")  # noqa: F841 (kept observed)
    model = manager.models["alice"]
    assert len(model._observers) == 1
    stopped = defer.Deferred()
    model.stoppedObserving = lambda p, o: (
        type(model).stoppedObserving(model, p, o), stopped.callback(None))
    proxy.partitioned = True
    await stopped.addTimeout(10, reactor)
    assert model._observers == {}
    del model.stoppedObserving
