"""
Behaviour that was once uncovered or wrong, found by reading the code: an
upstream that upgrades its interfaces, held model updates, values that do
not decode, replays that find nothing, a stock PB observer, concurrent
lookups.
"""

from __future__ import annotations

import datetime

import pytest
import pytest_twisted
from twisted.internet import defer, reactor
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.spread import jelly, pb
from zope.interface import Interface, implementer
from zope.interface.interface import InterfaceClass, Method

from aurora import Client, Manager, Registry, Server, errors, referenceError, signals
from tests.app import IUserManager, User, UserManager, UserModel
from tests.helpers import SignalLog, slowObserver

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


class Junk(pb.Jellyable):
    """Serializes as whatever s-expression it is given: a broken server."""

    def __init__(self, sexp) -> None:
        self.sexp = sexp

    def jellyFor(self, jellier):
        return self.sexp


_UNREADABLE = [
    ([b"tests.nothing.Unknown", b"x"], "not declared here"),
    ([b"dereference", 42], "dangling jelly reference"),
    ([b"local", 77], "never handed out"),
    ([b"aurora.ref", 1], "malformed"),
]


@pytest.mark.parametrize("sexp, why", _UNREADABLE)
@pytest_twisted.ensureDeferred
async def test_anAnswerTheClientCannotReadIsAnErrorNotAHang(served, sexp, why):
    users = await served.remote.getManager(IUserManager)
    served.manager.users["junk"] = Junk(sexp)
    with pytest.raises(errors.SerializationError, match=why):
        await users.getUser("junk").addTimeout(30, reactor)
    assert await users.echo("still here") == "still here"


class Unreadable(errors.Error):
    fields = ("detail",)


@pytest.mark.parametrize("sexp, why", _UNREADABLE)
@pytest_twisted.ensureDeferred
async def test_anErrorTheClientCannotReadIsAnErrorNotAHang(served, sexp, why, monkeypatch):
    users = await served.remote.getManager(IUserManager)

    def fail(kind):
        raise Unreadable("broken", detail=Junk(sexp))

    monkeypatch.setattr(served.manager, "fail", fail)
    with pytest.raises(errors.SerializationError, match=why):
        await users.fail("x").addTimeout(30, reactor)
    assert await users.echo("still here") == "still here"


@pytest_twisted.ensureDeferred
async def test_heldModelUpdatesArriveWhenTheSlowPeerResumes():
    """
    Updates held for a client that stopped reading are coalesced and, when it
    reads again, delivered: its mirror ends at the model's final state.
    """
    async with slowObserver() as s:
        s.model.online = True
        s.model.name = "final"
        assert s.flow.pending  # held, not written
        log = SignalLog(signals.changed, s.mirror)
        try:
            s.client._root._ref.broker.transport.resumeProducing()
            for _ in range(1000):  # bounded: one event per update written
                if s.mirror.name == "final" and s.mirror.online is True:
                    break
                await log.next()
        finally:
            log.close()
        assert (s.mirror.name, s.mirror.online) == ("final", True)
        assert s.flow.pending == {}


@pytest_twisted.ensureDeferred
async def test_modelUpdatesCarryValuesThatAreNotPlain(served):
    """A model field set to copies, bytes, nested containers: the mirror gets them."""
    users = await served.remote.getManager(IUserManager)
    mirror = await users.getModel("alice")
    model = served.manager.models["alice"]
    log = SignalLog(signals.changed, mirror)
    try:
        values = [
            User(name="carol", email="c@example.org"),
            {"raw": b"\x00\xff", "when": datetime.date(2026, 12, 2), "n": [1, (2, 3)]},
            [User(name="d", email="d@example.org"), None, 2**70],
        ]
        for value in values:
            arrived = log.next()
            model.online = value
            event = await arrived
            assert mirror.online == value and event["value"] == value
            assert type(mirror.online) is type(value)
        assert isinstance(mirror.online[0], User)
    finally:
        log.close()


@pytest_twisted.ensureDeferred
async def test_aReplayThatNoLongerFindsAMirrorMakesItStale(served):
    """
    After a reconnect the client fetches the list again; a model that is no
    longer in it cannot follow anything: its mirror becomes StaleReference,
    the others are rebound.
    """
    users = await served.remote.getManager(IUserManager)
    alice, bob = await users.listModels()
    assert (alice.name, bob.name) == ("alice", "bob")
    del served.manager.models["bob"]
    back = SignalLog(signals.connected, served.client)
    try:
        reconnected = back.next()
        served.client._root._ref.broker.transport.loseConnection()
        await reconnected
    finally:
        back.close()
    assert isinstance(referenceError(bob), errors.StaleReference)
    assert "no longer returns a match" in str(referenceError(bob))
    assert referenceError(alice) is None
    log = SignalLog(signals.changed, alice)
    try:
        arrived = log.next()
        served.manager.models["alice"].online = True
        await arrived
    finally:
        log.close()
    assert alice.online is True


@pytest_twisted.ensureDeferred
async def test_aModelSentAndEchoedBackIsTheOriginal(served):
    """
    The server's mirror of a client's model, answered straight back, arrives
    as the client's own object: the server keeps the mirror until the answer
    naming it has left, so its decache cannot overtake it.
    """
    users = await served.remote.getManager(IUserManager)
    mine = UserModel(name="x", online=False)
    assert await users.echo(mine) is mine
    assert await users.asyncEcho(mine) is mine
    assert await users.echo([mine, {"again": mine}]) == [mine, {"again": mine}]


class StockMirror(pb.RemoteCache):
    """What a stock PB application writes to observe a Cacheable."""

    updates: list = []

    def setCopyableState(self, state):
        self.__dict__.update(state)

    def observe_update(self, name, value):
        self.__dict__[name] = value
        StockMirror.updates.append((name, value))
        waiting, StockMirror.waiting = StockMirror.waiting, None
        if waiting is not None:
            waiting.callback(None)

    waiting = None


class _StockBroker(pb.Broker):
    """Stock PB, taught only to take aurora's reference atom as a reference."""

    def receiveReference(self, luid, names, descriptions):
        return pb.RemoteReference(None, self, luid, 1)


@pytest_twisted.ensureDeferred
async def test_aStockPBPeerObservesAModel(served, monkeypatch):
    """
    A Model travels as a PB Cacheable that stock PB can mirror: its state
    arrives, and each change is an C{observe_update(name, value)}.
    """
    monkeypatch.setitem(jelly.unjellyableRegistry, b"tests.app.UserModel", StockMirror)
    monkeypatch.setattr(StockMirror, "updates", [])
    factory = pb.PBClientFactory()
    factory.protocol = _StockBroker
    await TCP4ClientEndpoint(reactor, "127.0.0.1", served.port).connect(factory)
    try:
        root = await factory.getRootObject()
        view = await root.callRemote("login", None, None)
        users = await view.callRemote("getManager", "tests.app.IUserManager")
        mirror = await users.callRemote("getModel", "alice")
        assert isinstance(mirror, StockMirror)
        assert (mirror.name, mirror.online) == ("alice", False)
        for value in (True, "away", None):
            StockMirror.waiting = arrived = defer.Deferred()
            served.manager.models["alice"].online = value
            await arrived.addTimeout(30, reactor)
            assert mirror.online == value
        assert StockMirror.updates == [("online", True), ("online", "away"), ("online", None)]
    finally:
        lost = defer.Deferred()
        root.broker.notifyOnDisconnect(lambda: lost.callback(None))
        factory.disconnect()
        await lost


@pytest_twisted.ensureDeferred
async def test_aCallWhileDisconnectedNamesTheServerPlainly():
    server, port = await _serve(_service("ping", "version"), 1)
    client = Client(f"tcp:127.0.0.1:{port}", **QUIET)
    log = SignalLog(signals.disconnected, client)
    try:
        held = await (await client.getRegistry()).getManager("upgraded.app.IService")
        gone = log.next()
        await server.stop()
        await gone
        with pytest.raises(errors.ConnectionLost) as e:
            await held.ping()
        assert str(e.value) == f"upgraded.app.IService.ping: no connection to 127.0.0.1:{port}"
    finally:
        log.close()
        await client.stop()


def test_aClientRetryingASilentServerSaysSoOncePerInterval():
    """
    A server that accepts and never speaks: each attempt is dropped after
    the timeout, and the watchdog says so once per log interval, not once
    per attempt.
    """
    from twisted.internet import protocol
    from twisted.logger import formatEvent, globalLogPublisher

    from aurora.testing import MemoryNetwork

    net = MemoryNetwork()
    factory = protocol.Factory.forProtocol(protocol.Protocol)
    accepted = []
    factory.buildProtocol = lambda addr: accepted.append(addr) or protocol.Protocol()
    net.result(net.serverEndpoint("mute").listen(factory))
    events: list = []
    globalLogPublisher.addObserver(events.append)
    try:
        net.client(address="mute", heartbeat=1, timeout=2, reconnectDelay=0.5,
                   maxReconnectDelay=1, connectTimeout=None)
        net.advance(50)  # within one log interval (60 s)
    finally:
        globalLogPublisher.removeObserver(events.append)
        net.stop()
    dropped = [e for e in events if "dropping the connection" in formatEvent(e)]
    assert len(accepted) >= 5
    assert len(dropped) == 1, [formatEvent(e) for e in dropped]


def test_getRegistryWaitsForAServerThatIsNotThereYet():
    """
    A service started before its server: getRegistry() keeps retrying a
    refused endpoint and fires once the server is up, within connectTimeout.
    """
    from aurora.testing import MemoryNetwork

    net = MemoryNetwork()
    client = net.client(address="later", heartbeat=None, connectTimeout=30)
    try:
        d = client.getRegistry()
        net.advance(5)  # refused, again and again
        assert not d.called and not client.connected
        registry = Registry()
        registry.register(IUserManager, UserManager(clock=net.reactor))
        net.serve(registry, address="later")
        net.advance(10)  # the next retry, within the backoff
        remote = net.result(d)
        assert net.result(remote.interfaces()) == ["tests.app.IUserManager"]
    finally:
        net.stop()


def test_wrappersOfOneInterfaceShareOneMethodTable():
    """
    Ten thousand wrappers of one interface hold one table of its methods,
    not ten thousand; an interface described again, unchanged, is kept; and
    nothing is pinned once the interface is gone.
    """
    import gc
    import types
    import weakref

    from zope.interface import providedBy

    from aurora import _schema
    from aurora.remote import Wrapper, learnInterface

    settings = types.SimpleNamespace(learned={}, callTimeout=None, tracker=None)
    description = _schema.describe(_service(*(f"m{i}" for i in range(100))))
    learnInterface(description, settings)
    first = settings.learned["upgraded.app.IService"]
    learnInterface(dict(description), settings)  # each connection describes it again
    assert settings.learned["upgraded.app.IService"] is first
    wrappers = [Wrapper(None, ("upgraded.app.IService",), settings) for _ in range(3)]
    assert providedBy(wrappers[0]) is providedBy(wrappers[2])
    assert _schema.exposedMethods(wrappers[0]) is _schema.exposedMethods(wrappers[2])
    assert len(_schema.exposedMethods(wrappers[0])) == 100
    changed = dict(description, methods={"other": description["methods"]["m0"]})
    learnInterface(changed, settings)
    assert settings.learned["upgraded.app.IService"] is not first
    gone = weakref.ref(first)
    del first, wrappers
    gc.collect()
    assert gone() is None  # no cache of aurora's keeps it


@pytest_twisted.ensureDeferred
async def test_anUnknownNameIsEchoedBoundedOnOneLine(served):
    with pytest.raises(errors.UnknownInterface) as e:
        await served.remote.getManager("a.I\n\x1b]0;owned\x07" * 3000)
    text = str(e.value)
    assert "\n" not in text and "\x1b" not in text and len(text) < 400, text
    assert text.endswith("offered: tests.app.IUserManager")


def test_anUnknownInterfaceListsAtMostTwentyNames():
    from aurora.server import _offering

    names = [f"app.I{i:02}" for i in range(25)]
    text = _offering(names)
    assert text.startswith("offered: app.I00, ") and "app.I19" in text
    assert "app.I20" not in text and text.endswith(" and 5 more")
    assert _offering([]) == "none is offered to you"
