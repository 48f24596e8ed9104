"""Relays in one process: chains, composite registries, subscriptions, limits."""

from __future__ import annotations

import pytest
import pytest_twisted
from twisted.internet import defer, reactor, task
from zope.interface import Interface, implementer

from aurora import Client, Manager, Registry, Server, errors, signals
from aurora.relay import Relay
from aurora.remoteable import Model
from tests.app import IAdmin, IUserManager, NotAllowed, User, UserManager
from tests.helpers import SignalLog, slowObserver

QUIET = dict(heartbeat=None, reconnectDelay=0.05, maxReconnectDelay=0.2)


class Chain:
    """An origin server, N relays in a row, and an end client."""

    def __init__(self) -> None:
        self.manager = UserManager()
        self.registry = Registry()
        self.registry.register(IUserManager, self.manager)
        self.registry.register(IAdmin, self.manager.admin)
        self.relays: list[Relay] = []
        self.clients: list[Client] = []

    async def start(self, hops: int, originOptions: dict | None = None,
                    **relayOptions) -> None:
        self.origin = Server(self.registry, **(originOptions or {}))
        port = (await self.origin.listen("tcp:0:interface=127.0.0.1")).getHost().port
        self.originPort = port
        for _ in range(hops):
            relay = Relay(f"tcp:127.0.0.1:{port}", clientOptions=dict(QUIET),
                          **relayOptions)
            self.relays.append(relay)
            [listening] = await relay.start("tcp:0:interface=127.0.0.1")
            port = listening.getHost().port
        self.endPort = port

    def client(self, **kw) -> Client:
        client = Client(f"tcp:127.0.0.1:{self.endPort}", **{**QUIET, **kw})
        self.clients.append(client)
        return client

    async def stop(self) -> None:
        await defer.gatherResults([c.stop() for c in self.clients])
        for relay in reversed(self.relays):
            await relay.stop()
        await self.origin.stop()


@pytest_twisted.async_yield_fixture()
async def chain5():
    c = Chain()
    await c.start(5)
    yield c
    await c.stop()


def relayMirrors(relay: Relay) -> list[Model]:
    return [o for o in relay.client._tracker.live() if isinstance(o, Model)]


@pytest_twisted.ensureDeferred
async def test_fiveHopChainCarriesAllThreeKinds(chain5):
    registry = await chain5.client().getRegistry()
    assert await registry.interfaces() == ["tests.app.IAdmin", "tests.app.IUserManager"]
    users = await registry.getManager(IUserManager)
    assert await users.echo({"deep": [1, 2]}) == {"deep": [1, 2]}
    alice = await users.getUser("alice")
    assert type(alice) is User and alice.email == "alice@example.org"
    assert await users.addUser(User(name="dave", email="d@example.org")) == "User"
    assert chain5.manager.users["dave"] == User(name="dave", email="d@example.org")
    admin = await users.getAdmin()
    assert await admin.ping() == "pong"
    with pytest.raises(NotAllowed) as e:
        await users.fail("app")
    assert e.value.who == "alice"
    with pytest.raises(errors.UnknownInterface, match="nope.INope"):
        await registry.getManager("nope.INope")

    mirror = await users.getModel("alice")
    hops = [relayMirrors(r) for r in chain5.relays]
    assert all(len(m) == 1 for m in hops)
    logs = [SignalLog(signals.changed, m[0]) for m in hops] + [
        SignalLog(signals.changed, mirror)]
    try:
        arrived = logs[-1].next()
        await users.setOnline("alice", True)
        await arrived
        # Every intermediate mirror sent `changed` to its own listeners.
        for log in logs:
            assert log.events == [{"name": "online", "value": True, "old": False}]
        assert mirror.online is True
    finally:
        for log in logs:
            log.close()


@pytest_twisted.ensureDeferred
async def test_compositeRegistryAndAllowList():
    class ILocal(Interface):
        def hello():
            """Answered by the relay itself."""

    @implementer(ILocal)
    class LocalManager(Manager):
        def hello(self):
            return "from the relay"

    local = Registry()
    local.register(ILocal, LocalManager())
    c = Chain()
    await c.start(1, allow=["tests.app.IUserManager"], local=local)
    try:
        registry = await c.client().getRegistry()
        assert await registry.interfaces() == sorted(
            [ILocal.__identifier__, "tests.app.IUserManager"])
        assert await (await registry.getManager(ILocal)).hello() == "from the relay"
        users = await registry.getManager(IUserManager)
        assert await users.echo(1) == 1
        # IAdmin exists upstream but is not re-published: unknown, no leak.
        with pytest.raises(errors.UnknownInterface) as e:
            await registry.getManager(IAdmin)
        assert "no manager is registered under tests.app.IAdmin" in str(e.value)
        # A relay does not ask its upstream what else there is (it may be
        # silent, or gone): the refusal is at once, without a list.
        assert "offered" not in str(e.value)
        # Nor through a method of an allowed interface that returns it: the
        # call fails naming the method, and the hidden interface is not named.
        with pytest.raises(errors.UnknownInterface) as e:
            await users.getAdmin()
        assert "tests.app.IUserManager.getAdmin returned a manager" in str(e.value)
        assert "IAdmin" not in str(e.value)
    finally:
        await c.stop()


@pytest_twisted.ensureDeferred
async def test_oneSubscriptionPerHop():
    c = Chain()
    await c.start(1)
    try:
        mirrors = []
        for _ in range(100):
            users = await (await c.client().getRegistry()).getManager(IUserManager)
            mirrors.append(await users.getModel("bob"))
        origin = c.manager.models["bob"]
        assert len(origin._observers) == 1  # the relay, once
        [face] = relayMirrors(c.relays[0])
        assert len(face._observers) == 100
        logs = [SignalLog(signals.changed, m) for m in mirrors]
        try:
            arrived = defer.gatherResults([log.next() for log in logs])
            origin.online = True
            await arrived
            assert all(m.online is True for m in mirrors)
        finally:
            for log in logs:
                log.close()
    finally:
        await c.stop()


@pytest_twisted.ensureDeferred
async def test_relayWithUpstreamDownAnswersConnectionLostAndRecovers():
    c = Chain()
    await c.start(1)
    try:
        client = c.client()
        registry = await client.getRegistry()
        users = await registry.getManager(IUserManager)
        mirror = await users.getModel("alice")
        relayDown = SignalLog(signals.disconnected, c.relays[0].client)
        relayUp = SignalLog(signals.connected, c.relays[0].client)
        endDown = SignalLog(signals.disconnected, client)
        changes = SignalLog(signals.changed, mirror)
        try:
            lost = relayDown.next()
            await c.origin.stop()
            await lost
            # At once: a call left waiting for its deadline would be a Timeout.
            with pytest.raises(errors.ConnectionLost):
                await users.echo(1)
            assert client.connected and endDown.events == []

            # The origin comes back on the same port, with alice online.
            c.manager.models["alice"].online = True
            back = relayUp.next()
            c.origin = Server(c.registry)
            await c.origin.listen(f"tcp:{c.originPort}:interface=127.0.0.1")
            await back
            assert await users.echo(2) == 2
            assert mirror.online is True
            assert changes.events == [{"name": "online", "value": True, "old": False}]
        finally:
            for log in (relayDown, relayUp, endDown, changes):
                log.close()
    finally:
        await c.stop()


@pytest_twisted.ensureDeferred
async def test_askingForMoreReferencesIsNotGettingThem():
    """
    A client that asks for a higher referenceLimit (before login, as aurora
    0.1 did) is held to the stock 1,024 unless the server granted it more.
    """
    c = Chain()
    await c.start(1)
    try:
        users = await (await c.client(referenceLimit=10_000).getRegistry()
                       ).getManager(IUserManager)
        with pytest.raises(errors.LimitExceeded, match="1024"):
            await users.makeModels(5000)
        other = await (await c.client().getRegistry()).getManager(IUserManager)
        assert len(await other.makeModels(10)) == 10
    finally:
        await c.stop()


@pytest_twisted.ensureDeferred
async def test_relayHoldsFiveThousandReferences():
    c = Chain()
    # The origin grants the relay's link, the relay its end clients.
    await c.start(1, originOptions={"grants": {None: {"referenceLimit": 100_000}}},
                  serverOptions={"grants": {None: {"referenceLimit": 10_000}}})
    try:
        # (Without the grants: test_askingForMoreReferencesIsNotGettingThem.)
        users = await (await c.client(referenceLimit=10_000).getRegistry()
                       ).getManager(IUserManager)
        models = await users.makeModels(5000)
        assert len(models) == 5000 and models[4999].name == "user4999"
        assert len(relayMirrors(c.relays[0])) == 5000
        upstream = c.relays[0].client._root._ref.broker
        assert len(upstream.locallyCachedObjects) == 5000
        changed = SignalLog(signals.changed, models[4321])
        try:
            arrived = changed.next()
            c.manager.many[4321].online = True
            await arrived
        finally:
            changed.close()
    finally:
        await c.stop()


@pytest_twisted.ensureDeferred
async def test_slowObserverCoalescedThenDisconnected():
    clock = task.Clock()
    async with slowObserver(clock=clock, maxLag=5.0) as s:
        model, flow = s.model, s.flow
        for i in range(1000):
            model.name = f"burst {i}"
            model.online = i % 2 == 0
        # Coalesced: one pending update per field, the latest value.
        assert len(flow.pending) == 2
        assert flow.pending[(model, "name")][1] == "burst 999"
        stopped = defer.Deferred()
        model.stoppedObserving = lambda p, o: (
            type(model).stoppedObserving(model, p, o), stopped.callback(None))
        clock.advance(6)
        model.online = None  # behind for longer than maxLag: disconnected
        await stopped.addTimeout(10, reactor)
        del model.stoppedObserving
        assert model._observers == {}
        s.client._root._ref.broker.transport.resumeProducing()


@pytest_twisted.ensureDeferred
async def test_relayThatCannotReachItsUpstreamSaysSoAtOnce():
    """
    A relay whose upstream refuses: once an attempt has failed, its clients
    get ConnectionLost naming the upstream and why, at once (their call
    deadline is far off), not a timeout blaming the relay.
    """
    import socket as _socket

    s = _socket.socket()
    s.bind(("127.0.0.1", 0))
    closed = s.getsockname()[1]
    s.close()  # nothing listens there: refused
    relay = Relay(f"tcp:127.0.0.1:{closed}", clientOptions=dict(QUIET))
    [port] = await relay.start("tcp:0:interface=127.0.0.1")
    client = Client(f"tcp:127.0.0.1:{port.getHost().port}", callTimeout=600, **QUIET)
    try:
        registry = await client.getRegistry()
        with pytest.raises(errors.ConnectionLost) as e:
            await registry.getManager(IUserManager)
        assert f"upstream tcp:127.0.0.1:{closed} is unreachable" in str(e.value)
        assert "refused" in str(e.value).lower()
    finally:
        await client.stop()
        await relay.stop()


@pytest_twisted.ensureDeferred
async def test_concurrentGetManagerGivesOneWrapper():
    """
    Many getManager calls for one interface at once, on a remote registry
    not yet connected (a relay just started) and on a connected one: no
    error, and one wrapper, the same for every caller.
    """
    c = Chain()
    await c.start(0)
    relay = Relay(f"tcp:127.0.0.1:{c.originPort}", clientOptions=dict(QUIET))
    try:
        upstream = relay.client.registry
        relay.client.start()  # its first attempt is under way
        first = await defer.gatherResults(
            [upstream.getManager(IUserManager) for _ in range(10)])
        assert all(w is first[0] for w in first)
        assert await first[0].echo(1) == 1
        [listening] = await relay.start("tcp:0:interface=127.0.0.1")
        c.endPort = listening.getHost().port
        registry = await c.client().getRegistry()
        again = await defer.gatherResults(
            [registry.getManager(IUserManager.__identifier__) for _ in range(10)]
            + [registry.getManager(IUserManager) for _ in range(10)])
        assert all(w is again[0] for w in again)
        assert IUserManager.providedBy(again[0])
        assert await again[0].echo(2) == 2
    finally:
        await relay.stop()
        await c.stop()


@pytest_twisted.ensureDeferred
async def test_concurrentGetManagerIsOneRequest():
    """
    Callers asking for one interface while a request for it is under way
    share that request: the server is asked once, every caller gets the one
    wrapper (each provides the interface it asked by), and a failure reaches
    every caller.
    """
    asked: list[str] = []

    class Counting(Registry):
        def getManager(self, iface):
            asked.append(iface)
            return super().getManager(iface)

    registry = Counting()
    registry.register(IUserManager, UserManager())
    server = Server(registry)
    port = (await server.listen("tcp:0:interface=127.0.0.1")).getHost().port
    client = Client(f"tcp:127.0.0.1:{port}", **QUIET)
    try:
        remote = await client.getRegistry()
        got = await defer.gatherResults(
            [remote.getManager(IUserManager) for _ in range(5)]
            + [remote.getManager(IUserManager.__identifier__) for _ in range(5)])
        assert asked == [IUserManager.__identifier__]
        assert all(w is got[0] for w in got) and IUserManager.providedBy(got[0])
        failed = await defer.DeferredList(
            [remote.getManager("no.such.IThing") for _ in range(3)], consumeErrors=True)
        assert [ok for ok, _ in failed] == [False] * 3
        assert all(f.check(errors.UnknownInterface) for _, f in failed)
        assert asked.count("no.such.IThing") == 1
    finally:
        await client.stop()
        await server.stop()
