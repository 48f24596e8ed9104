"""
Reconnection against a real server process killed with SIGKILL and
restarted on the same port, and a silent partition through a proxy.
"""

from __future__ import annotations

import gc
import weakref

import pytest
import pytest_twisted
from twisted.internet import defer, error, reactor, task
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.logger import formatEvent, globalLogPublisher
from zope.interface import implementer

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
    with pytest.raises(errors.ConnectionLost) as e:
        await users.echo(1)
    # At once: a call left waiting for its deadline would fail with Timeout.
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
        # The proxy closes nothing: only the heartbeat can notice (TCP alone
        # would not for minutes).
        await lost
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


# -- what a client logs while it cannot reach its server


@implementer(IStreamClientEndpoint)
class ScriptedEndpoint:
    """
    Each attempt fails with the next exception in C{outcomes}; once they
    are used up, it connects to C{real}.
    """

    def __init__(self, real) -> None:
        self.real = real
        self.outcomes: list[Exception] = []
        self.attempts = 0

    def __repr__(self) -> str:
        return "scripted-endpoint"

    def connect(self, factory):
        self.attempts += 1
        if self.outcomes:
            return defer.fail(self.outcomes.pop(0))
        return self.real.connect(factory)


def _clientLines(events: list[dict]) -> list[str]:
    """What a client said about its connection, one entry per log line."""
    lines = []
    for event in events:
        text = formatEvent(event)
        if "Scheduling retry" in text or "Starting factory" in text:
            lines.append("retry")
        elif text.startswith("cannot reach scripted-endpoint"):
            lines.append("cannot reach: " + text.rpartition("): ")[2])
        elif text.startswith(("connected to scripted-endpoint",
                              "lost the connection to scripted-endpoint")):
            lines.append(text.split(" scripted-endpoint")[0])
    return lines


@pytest_twisted.ensureDeferred
async def test_unreachableIsLoggedOncePerChangeOfState():
    """
    However many retries fail, a client says why once: when it first
    fails, for each other reason, and again after it was up.
    """
    registry = Registry()
    registry.register(IUserManager, UserManager())
    server = Server(registry)
    port = (await server.listen("tcp:0:interface=127.0.0.1")).getHost().port
    endpoint = ScriptedEndpoint(TCP4ClientEndpoint(reactor, "127.0.0.1", port))
    clock = task.Clock()  # retries come when the test advances it
    client = Client(endpoint, heartbeat=None, reconnectDelay=1, maxReconnectDelay=1,
                    clock=clock)
    events: list[dict] = []
    globalLogPublisher.addObserver(events.append)
    down, up = SignalLog(signals.disconnected, client), SignalLog(signals.connected, client)

    def retry(times: int) -> None:
        for _ in range(times):
            clock.advance(2.5)  # past the longest backoff: exactly one attempt

    try:
        refused = error.ConnectionRefusedError("111: Connection refused")
        endpoint.outcomes = [refused] * 5
        client.start()
        retry(4)
        assert endpoint.attempts == 5
        endpoint.outcomes = [error.TCPTimedOutError()] * 3 + [refused] * 2
        retry(5)  # (back to a reason it said: not news)
        connected = up.next()
        retry(1)  # the real server this time
        await connected
        lost = down.next()
        await server.stop()
        await lost
        # `disconnected` is sent from within connectionLost; ClientService
        # schedules its retry when that returns: let it.
        await task.deferLater(reactor, 0, lambda: None)
        endpoint.outcomes = [refused] * 4
        retry(4)
        assert endpoint.attempts == 10 + 1 + 4
        assert _clientLines(events) == [
            "cannot reach: Connection was refused by other side: 111: Connection refused.",
            "cannot reach: TCP connection timed out.",
            "connected to",
            "lost the connection to",
            "cannot reach: Connection was refused by other side: 111: Connection refused.",
        ]
    finally:
        globalLogPublisher.removeObserver(events.append)
        down.close()
        up.close()
        await client.stop()
        await server.stop()


# -- a connection lost while the client is resyncing


class GatedRegistry(Registry):
    """A registry whose next getManager of C{name} waits for C{gate}."""

    def __init__(self) -> None:
        super().__init__()
        self.gated: tuple[str, defer.Deferred, defer.Deferred] | None = None

    def hold(self, name: str) -> tuple[defer.Deferred, defer.Deferred]:
        """(reached: fires when the call arrives, gate: fire it to answer)."""
        reached, gate = defer.Deferred(), defer.Deferred()
        self.gated = (name, reached, gate)
        return reached, gate

    def getManager(self, iface):
        answer = super().getManager(iface)
        if self.gated is not None and iface == self.gated[0]:
            _, reached, gate = self.gated
            self.gated = None
            reached.callback(None)
            return gate.addCallback(lambda _: answer)
        return answer


@pytest_twisted.ensureDeferred
async def test_connectionLostDuringResync():
    """
    The connection drops while the client is rebinding what the application
    holds: it reconnects again, and every object is rebound, none stale.
    """
    manager = UserManager()
    registry = GatedRegistry()
    registry.register(IUserManager, manager)
    registry.register(IAdmin, manager.admin)
    server = Server(registry)
    port = (await server.listen("tcp:0:interface=127.0.0.1")).getHost().port
    proxy = PartitionProxy(port)
    client = Client(f"tcp:127.0.0.1:{await proxy.start()}", **FAST)
    down, up = SignalLog(signals.disconnected, client), SignalLog(signals.connected, client)

    def cut() -> None:
        for pipe in list(proxy.pipes):
            pipe.transport.abortConnection()

    try:
        remote = await client.getRegistry()
        users = await remote.getManager(IUserManager)
        admin = await remote.getManager(IAdmin)
        fromMethod = await users.getAdmin()
        mirror = await users.getModel("alice")
        up.events.clear()
        reached, gate = registry.hold(IAdmin.__identifier__)
        lost = down.next()
        cut()
        await lost
        manager.models["alice"].online = True  # a change while it is away
        await reached.addTimeout(30, reactor)  # the resync is under way ...
        back = up.next()
        cut()  # ... and its connection goes
        gate.callback(None)  # (the answer is for a connection that is gone)
        await back
        # One outage as the application sees it: the resync that failed
        # half-way neither said `connected` nor a second `disconnected`.
        assert (len(down.events), len(up.events)) == (1, 1)
        assert await remote.getManager(IAdmin) is admin
        assert await remote.getManager(IUserManager) is users
        for obj in (users, admin, fromMethod, mirror):
            assert referenceError(obj) is None, obj
        assert await admin.ping() == "pong"
        assert await fromMethod.ping() == "pong"
        assert await users.echo("after") == "after"
        assert mirror.online is True
        changes = SignalLog(signals.changed, mirror)
        try:
            following = changes.next()
            await users.setOnline("alice", False)
            await following
            assert mirror.online is False
        finally:
            changes.close()
    finally:
        down.close()
        up.close()
        await client.stop()
        await proxy.stop()
        await server.stop()


def test_reasonsLoggedPerOutageAreBounded():
    """A reason may hold what a peer sent: at most 10 lines per outage."""
    clock = task.Clock()
    endpoint = ScriptedEndpoint(None)
    endpoint.outcomes = [error.ConnectError(f"attempt {i}") for i in range(15)]
    client = Client(endpoint, heartbeat=None, reconnectDelay=1, maxReconnectDelay=1,
                    clock=clock)
    events: list[dict] = []
    globalLogPublisher.addObserver(events.append)
    try:
        client.start()
        for _ in range(14):
            clock.advance(2.5)
        assert endpoint.attempts == 15
        assert _clientLines(events) == [
            f"cannot reach: An error occurred while connecting: attempt {i}."
            for i in range(10)]
    finally:
        globalLogPublisher.removeObserver(events.append)
        client.stop()


def test_aReasonIsOneBoundedLineWhateverThePeerSent():
    """What a server sent may be in the reason: one line, no escapes, bounded."""
    clock = task.Clock()
    endpoint = ScriptedEndpoint(None)
    endpoint.outcomes = [error.ConnectError("x\n\x1b[2Jforged line\n" * 50_000)]
    client = Client(endpoint, heartbeat=None, reconnectDelay=1, maxReconnectDelay=1,
                    clock=clock)
    events: list[dict] = []
    globalLogPublisher.addObserver(events.append)
    try:
        client.start()
        [line] = _clientLines(events)
        assert "\n" not in line and "\x1b" not in line and len(line) < 400, line
    finally:
        globalLogPublisher.removeObserver(events.append)
        client.stop()
