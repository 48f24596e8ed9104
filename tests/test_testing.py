"""
aurora.testing: a real Server and real Clients connected in memory, time on
a Clock.  Every test here is synchronous: no reactor runs, no socket opens.
"""

from __future__ import annotations

import random
import socket

import pytest
from pydispatch import dispatcher
from twisted.internet import protocol
from twisted.internet import reactor as globalReactor

from aurora import Registry, Relay, auth, errors, signals
from aurora.testing import MemoryNetwork, NotFired, Unsettled
from tests.app import IAdmin, IUserManager, NotAllowed, User, UserManager, UserModel


class Signals:
    """Records one signal from one sender."""

    def __init__(self, signal: str, sender) -> None:
        self.signal, self.sender = signal, sender
        self.events: list[dict] = []
        dispatcher.connect(self, signal=signal, sender=sender, weak=False)

    def __call__(self, **kw) -> None:
        kw.pop("signal", None)
        kw.pop("sender", None)
        self.events.append(kw)

    def close(self) -> None:
        dispatcher.disconnect(self, signal=self.signal, sender=self.sender, weak=False)


class App:
    """The test application served on a MemoryNetwork, and one client of it."""

    def __init__(self, **clientOptions) -> None:
        self.net = MemoryNetwork()
        self.manager = UserManager(clock=self.net.reactor)
        self.registry = Registry()
        self.registry.register(IUserManager, self.manager)
        self.server = self.net.serve(self.registry)
        self.client = self.net.client(**clientOptions)
        self.connected = Signals(signals.connected, self.client)
        self.disconnected = Signals(signals.disconnected, self.client)
        self.users = self.net.result(self.client.registry.getManager(IUserManager))

    def close(self) -> None:
        self.connected.close()
        self.disconnected.close()
        self.net.stop()


@pytest.fixture
def app():
    a = App()
    yield a
    a.close()


def test_call(app):
    """Plain values go there and back through aurora's codec."""
    value = {"list": [1, 2.5, None, True], "bytes": b"\x00\xff", "nested": {"t": (1, "x")}}
    assert app.net.result(app.users.echo(value)) == value
    assert IUserManager.providedBy(app.users)
    assert app.client.connected


def test_writesAfterTheConnectionIsLostAreDropped(app):
    """
    A reference collected after its connection was lost sends a decref: it
    is dropped, as a real transport drops it, not written into a transport
    whose buffer may already be finalized (at interpreter exit).
    """
    broker = app.users._ref.broker
    app.net.disconnect()
    assert broker.disconnected
    broker.transport.io.close()  # what IOBase.__del__ does to it at exit
    broker.sendDecRef(app.users._ref.luid)  # what RemoteReference.__del__ does


def test_unsendableValueFailsTheCall(app):
    """The bytes are really encoded: what cannot travel fails as it would over TCP."""
    with pytest.raises(errors.SerializationError):
        app.net.result(app.users.echo(object()))
    assert app.net.result(app.users.echo("still connected")) == "still connected"


def test_copyableByValue(app):
    alice = app.net.result(app.users.getUser("alice"))
    assert isinstance(alice, User)
    assert (alice.name, alice.email) == ("alice", "alice@example.org")
    assert alice is not app.manager.users["alice"]  # a copy, not the server's object
    alice.email = "changed@example.org"
    assert app.manager.users["alice"].email == "alice@example.org"
    # ... and it travels back as a User.
    carol = User(name="carol", email="carol@example.org")
    assert app.net.result(app.users.addUser(carol)) == "User"
    assert app.manager.users["carol"] is not carol


def test_modelMirrorAndChangedOnBothSides(app):
    mirror = app.net.result(app.users.getModel("alice"))
    original = app.manager.models["alice"]
    assert isinstance(mirror, UserModel) and mirror is not original
    onServer, onClient = Signals(signals.changed, original), Signals(signals.changed, mirror)
    try:
        app.net.result(app.users.setOnline("alice", True))
        change = {"name": "online", "value": True, "old": False}
        assert onServer.events == [change]
        assert onClient.events == [change]
        assert mirror.online is True
        # A change made on the server directly reaches the mirror at the next flush.
        original.online = False
        assert onClient.events == [change]
        app.net.flush()
        assert onClient.events[-1] == {"name": "online", "value": False, "old": True}
        assert mirror.online is False
    finally:
        onServer.close()
        onClient.close()


def test_errorsRaisedRemotely(app):
    with pytest.raises(NotAllowed) as caught:  # an aurora Error: as itself
        app.net.result(app.users.fail("app"))
    assert caught.value.who == "alice"
    with pytest.raises(errors.RemoteError) as caught:  # anything else: its type
        app.net.result(app.users.fail("value"))
    assert caught.value.remoteType == "builtins.ValueError"
    with pytest.raises(errors.NoSuchMethod):
        app.net.result(app.users.callRemote("notInInterface"))


def test_resultNeedsTheClockToMove(app):
    """result() never moves the clock: a Deferred that waits for time says so."""
    d = app.users.slowEcho("late", 10)
    with pytest.raises(NotFired, match="advance"):
        app.net.result(d)
    app.net.advance(10)
    assert app.net.result(d) == "late"


def test_heartbeatKeepsAnIdleConnection():
    """An hour of silence from the application: pings keep both sides up."""
    app = App(heartbeat=5)
    try:
        app.net.advance(3600)
        assert app.client.connected
        assert app.disconnected.events == []
        assert app.net.result(app.users.echo(1)) == 1
    finally:
        app.close()


def test_silentPartitionIsNoticedByTheHeartbeat():
    """
    Nothing arrives, no close either: the client declares the connection
    dead C{timeout} (1.75 x heartbeat) after it last heard from the server.
    """
    app = App(heartbeat=2)
    try:
        app.net.advance(1)
        app.net.disconnect(silently=True)
        # Last heard at 0 (the handshake); the ping at 2 goes unanswered.
        app.net.advance(3.5 - 1 - 0.01)
        assert app.client.connected
        app.net.advance(0.01)
        assert not app.client.connected
        assert app.disconnected.events == [{}]
        with pytest.raises(errors.ConnectionLost):
            app.net.result(app.users.echo(1))
    finally:
        app.close()


def test_callDeadlineOnTheClock():
    """No heartbeat, a partition: the call's own deadline ends the wait."""
    app = App(heartbeat=None, callTimeout=30)
    try:
        app.net.disconnect(silently=True)
        d = app.users.echo("lost")
        with pytest.raises(NotFired):
            app.net.result(d)
        app.net.advance(29.9)
        with pytest.raises(NotFired):
            app.net.result(d)
        app.net.advance(0.1)
        with pytest.raises(errors.Timeout):
            app.net.result(d)
    finally:
        app.close()


def test_partitionHealedInTimeDeliversWhatWaited():
    """As TCP would: a partition shorter than the timeout loses nothing."""
    app = App(heartbeat=5)
    try:
        app.net.disconnect(silently=True)
        d = app.users.echo("held")
        app.net.advance(4)
        app.net.reconnect()
        assert app.net.result(d) == "held"
        assert app.client.connected and app.disconnected.events == []
    finally:
        app.close()


def test_endDroppedDuringAPartitionIsResetWhenItHeals():
    """
    The server gives up on a silent client (its idle probe goes unanswered);
    the client, without a heartbeat, hears of it only when the network is
    back, as TCP's reset, and then reconnects.
    """
    net = MemoryNetwork()
    registry = Registry()
    registry.register(IUserManager, UserManager(clock=net.reactor))
    net.serve(registry, idleTimeout=10)
    client = net.client(heartbeat=None)
    try:
        users = net.result(client.registry.getManager(IUserManager))
        net.disconnect(silently=True)
        net.advance(60)  # the server probed at 10 and dropped it at 15
        assert client.connected
        net.reconnect()
        assert not client.connected
        net.advance(1)
        assert client.connected
        assert net.result(users.echo("back")) == "back"
    finally:
        net.stop()


def test_disconnectThenReconnectAndRebindOnTheClock(app):
    mirror = app.net.result(app.users.getModel("bob"))
    changes = Signals(signals.changed, mirror)
    try:
        app.connected.events.clear()
        app.net.disconnect()
        assert not app.client.connected
        assert app.disconnected.events == [{}]
        with pytest.raises(errors.ConnectionLost):  # at once, no waiting
            app.net.result(app.users.echo(1))
        app.manager.models["bob"].online = True  # changed while the client is away
        # Still down: the client's retries are refused, on the clock.
        app.net.advance(10)
        assert not app.client.connected
        app.net.reconnect()
        app.net.advance(31)  # past the longest wait: maxReconnectDelay and jitter
        assert app.client.connected
        assert app.connected.events == [{"registry": app.client.registry}]
        assert app.disconnected.events == [{}]
        # The same wrapper and mirror, bound to the new connection.
        assert app.net.result(app.users.echo("again")) == "again"
        assert mirror.online is True  # refreshed by the resync,
        assert changes.events == [{"name": "online", "value": True, "old": False}]
        app.manager.models["bob"].online = False  # and observed again
        app.net.flush()
        assert mirror.online is False
    finally:
        changes.close()


def test_serverRestart():
    """The server goes away (refused meanwhile) and another takes its address."""
    app = App()
    try:
        app.net.result(app.server.stop())
        assert not app.client.connected and app.disconnected.events == [{}]
        app.net.advance(5)
        assert not app.client.connected
        manager = UserManager(clock=app.net.reactor)
        manager.users["dave"] = User(name="dave", email="dave@example.org")
        registry = Registry()
        registry.register(IUserManager, manager)
        app.net.serve(registry)
        app.net.advance(31)
        assert app.client.connected
        assert app.net.result(app.users.getUser("dave")).name == "dave"
    finally:
        app.close()


def test_nothingListening():
    net = MemoryNetwork()
    client = net.client(connectTimeout=5)
    d = client.getRegistry()
    net.advance(5)
    with pytest.raises(errors.ConnectionFailed, match="nothing listens there"):
        net.result(d)
    net.stop()


def test_anonymousAccessThroughAPortal():
    """A portal's per-identity view works in memory (no password: no hashing thread)."""
    net = MemoryNetwork()
    registry = Registry()
    registry.register(IUserManager, UserManager(clock=net.reactor))
    registry.register(IAdmin, UserManager(clock=net.reactor).admin)
    net.serve(registry, auth.portal(
        anonymous=True, anonymousInterfaces=[IUserManager.__identifier__]))
    client = net.client()
    try:
        users = net.result(client.registry.getManager(IUserManager))
        assert net.result(users.getUser("bob")).name == "bob"
        with pytest.raises(errors.UnknownInterface):
            net.result(client.registry.getManager(IAdmin))
    finally:
        net.stop()


def test_relayChainInMemory():
    """The endpoints are the seam: a Relay between origin and client, in memory."""
    net = MemoryNetwork()
    manager = UserManager(clock=net.reactor)
    registry = Registry()
    registry.register(IUserManager, manager)
    net.serve(registry, address="origin")
    relay = Relay(net.clientEndpoint("origin"), reactor=net.reactor)
    net.result(relay.start(net.serverEndpoint("relay")))
    client = net.client(address="relay")
    try:
        users = net.result(client.registry.getManager(IUserManager))
        assert isinstance(net.result(users.getUser("alice")), User)
        mirror = net.result(users.getModel("alice"))
        manager.models["alice"].online = True
        net.flush()
        assert mirror.online is True
    finally:
        net.result(relay.stop())
        net.stop()


def test_noSocketNoThreadNoGlobalReactor(monkeypatch):
    """
    A whole session, with socket creation made to fail: nothing listens or
    connects for real, and the global reactor gets no timer.
    """
    def noSockets(*args, **kw):
        raise AssertionError("aurora.testing opened a socket")

    monkeypatch.setattr(socket, "socket", noSockets)
    before = set(globalReactor.getDelayedCalls())
    net = MemoryNetwork()
    registry = Registry()
    registry.register(IUserManager, UserManager(clock=net.reactor))
    net.serve(registry)
    client = net.client()
    users = net.result(client.registry.getManager(IUserManager))
    assert net.result(users.echo("x")) == "x"
    net.disconnect()
    net.reconnect()
    net.advance(60)
    assert client.connected
    net.stop()
    r = net.reactor
    assert (r.tcpServers, r.tcpClients, r.sslServers, r.sslClients,
            r.unixServers, r.unixClients) == ([], [], [], [], [], [])
    assert (r.getReaders(), r.getWriters()) == ([], [])
    assert set(globalReactor.getDelayedCalls()) == before
    assert r.getDelayedCalls() == []  # stop() left nothing behind


def test_endlessExchangeIsBounded():
    """Two protocols that answer each other forever: flush() gives up, saying so."""

    class PingPong(protocol.Protocol):
        def connectionMade(self):
            self.transport.write(b"ping")

        def dataReceived(self, data):
            self.transport.write(data)

    net = MemoryNetwork(maxRounds=50)
    net.result(net.serverEndpoint().listen(protocol.Factory.forProtocol(PingPong)))
    d = net.clientEndpoint().connect(protocol.Factory.forProtocol(PingPong))
    with pytest.raises(Unsettled, match="50 rounds"):
        net.flush()
    d.addErrback(lambda f: None)


def test_firstRetryWithinTwiceReconnectDelay(monkeypatch):
    monkeypatch.setattr(random, "uniform", lambda low, high: high)  # the most jitter
    app = App(reconnectDelay=0.25)
    try:
        app.net.disconnect()
        app.net.reconnect()
        app.net.advance(2 * 0.25)
        assert app.client.connected
    finally:
        app.close()


class _Hangup(protocol.Protocol):
    """What a server at its connection limit, or not aurora, does: accept, then close."""

    def connectionMade(self) -> None:
        self.factory.accepted += 1
        self.transport.loseConnection()


def test_aServerThatAcceptsAndClosesIsRetriedWithGrowingDelays():
    """
    The backoff is not reset by a TCP connection that never became an aurora
    connection: retries slow down (1.5x each) instead of hammering a server
    that is at its connection limit every reconnectDelay.
    """
    net = MemoryNetwork()
    factory = protocol.Factory.forProtocol(_Hangup)
    factory.accepted = 0
    net.result(net.serverEndpoint("hangup").listen(factory))
    client = net.client(address="hangup", heartbeat=None, reconnectDelay=1,
                        maxReconnectDelay=1000, connectTimeout=None)
    try:
        net.advance(60)
        # Delays of at least 1, 1.5, 2.25, ... s: at most 10 attempts in 60 s
        # (at a fixed 1-2 s there would be 30 or more).
        assert 5 <= factory.accepted <= 10, factory.accepted
        assert not client.connected
    finally:
        net.stop()
