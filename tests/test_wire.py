"""
Hostile input against a running server: a raw PB client (not aurora's) and
raw bytes.  Each bad message is refused; the server and its other clients
carry on.
"""

from __future__ import annotations

import os

import pytest
import pytest_twisted
from hypothesis import HealthCheck, given, settings, strategies as st
from twisted.internet import defer, protocol, reactor
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP4ServerEndpoint
from twisted.spread import banana, pb

from aurora import Registry, Server, errors
from aurora._broker import ClientFactory
from aurora.remote import wrap
from tests.app import IUserManager, UserManager
from tests.helpers import ServerProcess, memory, resetPeak


class Intruder(pb.Copyable):
    """A class the server never declared."""


class RawBroker(pb.Broker):
    """Stock PB, taught only to take aurora's reference atom as a reference."""

    def receiveReference(self, luid, names, descriptions):
        return pb.RemoteReference(None, self, luid, 1)


class RawClient:
    """Stock PB, stock security; sends whatever it is told to."""

    async def connect(self, port: int) -> None:
        self.factory = pb.PBClientFactory()
        self.factory.protocol = RawBroker
        await TCP4ClientEndpoint(reactor, "127.0.0.1", port).connect(self.factory)
        self.root = await self.factory.getRootObject()
        self.broker = self.root.broker
        self.view = await self.root.callRemote("login", None, None).addTimeout(
            10, reactor)

    def send(self, method: bytes, netArgs, netKw=None) -> defer.Deferred:
        """A hand-made message to the root object, already jellied."""
        broker = self.broker
        requestID = broker.newRequestID()
        d = defer.Deferred()
        broker.waitingForAnswers[requestID] = d
        broker.sendCall(b"message", requestID, b"root", method, 1, netArgs,
                        netKw if netKw is not None else [b"dictionary"])
        return d.addTimeout(10, reactor)

    async def close(self) -> None:
        if not self.broker.disconnected:
            done = defer.Deferred()
            self.broker.notifyOnDisconnect(lambda: done.callback(None))
            self.factory.disconnect()
            await done


@pytest_twisted.async_yield_fixture()
async def target():
    registry = Registry()
    registry.register(IUserManager, UserManager())
    server = Server(registry, maxMessageBytes=1024 * 1024, maxDepth=50)
    port = (await server.listen("tcp:0:interface=127.0.0.1")).getHost().port
    raw = RawClient()
    await raw.connect(port)
    bystander = RawClient()
    await bystander.connect(port)
    yield server, port, raw, bystander
    await raw.close()
    await bystander.close()
    await server.stop()


async def stillServes(client: RawClient) -> None:
    answer = await client.view.callRemote("interfaces")
    assert answer == ["tests.app.IUserManager"]


async def refused(d, kind):
    with pytest.raises(Exception) as e:
        await d
    error = e.value
    assert isinstance(error, kind), repr(error)
    return error


# Values that exercise every banana token and jelly's plain forms, and a
# string big enough to arrive in many chunks.
STOCK_VALUES = [
    1, -1, 2**31, -(2**31) - 1, 2**200, 0.5, float("inf"), b"bytes", "text \u00e9",
    None, True, False, [1, [2, (3, "x")]], {"a": [1, 2], 3: None}, (), [],
    "x" * 600_000, {"nested": [{"deep": [[[["down"]]]]}]},
]


@pytest_twisted.ensureDeferred
async def test_stockPBClientInteroperates(target):
    """aurora's own encoder, decoder and plain jelly against stock PB's."""
    server, port, raw, bystander = target
    users = await raw.view.callRemote("getManager", IUserManager.__identifier__)
    for value in STOCK_VALUES:
        assert await users.callRemote("echo", value) == value
    assert await users.callRemote("echo", value=[1, "two"]) == [1, "two"]


class StockEcho(pb.Root):
    def remote_echo(self, value):
        return value


@pytest_twisted.ensureDeferred
async def test_stockPBServerInteroperates():
    stock = pb.PBServerFactory(StockEcho())
    served: list[pb.Broker] = []
    build = stock.buildProtocol
    stock.buildProtocol = lambda addr: (served.append(build(addr)), served[-1])[1]
    port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(stock)
    factory = ClientFactory(wrap, callTimeout=10, clock=reactor)
    broker = await TCP4ClientEndpoint(reactor, "127.0.0.1",
                                      port.getHost().port).connect(factory)
    try:
        root = await broker.whenReady()
        for value in STOCK_VALUES:
            assert await root.callRemote("echo", value) == value
    finally:
        gone = []
        for b in (broker, *served):
            d: defer.Deferred = defer.Deferred()
            b.notifyOnDisconnect(lambda d=d: d.callback(None))
            gone.append(d)
        broker.close()
        await defer.gatherResults(gone)
        await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_instanceOfAnUndeclaredClassIsRefused(target):
    server, port, raw, bystander = target
    await refused(raw.root.callRemote("hello", Intruder()), errors.SerializationError)
    await stillServes(raw)
    await stillServes(bystander)


@pytest.mark.parametrize("atom", [
    [b"function", b"os.system"],
    [b"module", b"os"],
    [b"class", b"subprocess.Popen"],
    [b"instance", b"subprocess.Popen", [b"dictionary"]],
    [b"os.system", [b"tuple", [b"unicode", b"true"]]],
    [b"tests.test_wire.Intruder", [b"dictionary"]],
    [b"twisted.spread.pb.CopyableFailure", [b"dictionary"]],
    [b"dereference", 7],
])
@pytest_twisted.ensureDeferred
async def test_dangerousAtomsAreRefused(target, atom):
    server, port, raw, bystander = target
    error = await refused(raw.send(b"hello", [b"list", atom]), errors.SerializationError)
    assert "Traceback" not in str(error)
    await stillServes(raw)
    await stillServes(bystander)


@pytest.mark.parametrize("method", [b"_registry", b"__init__", b"jellyFor",
                                    b"remoteMessageReceived", b"notThere"])
@pytest_twisted.ensureDeferred
async def test_undeclaredAndUnderscoreMethodsAreRefused(target, method):
    server, port, raw, bystander = target
    await refused(raw.root.callRemote(method.decode()), errors.NoSuchMethod)
    await stillServes(raw)


@pytest_twisted.ensureDeferred
async def test_unknownObjectIdIsAnError(target):
    server, port, raw, bystander = target
    requestID = raw.broker.newRequestID()
    d = defer.Deferred()
    raw.broker.waitingForAnswers[requestID] = d
    raw.broker.sendCall(b"message", requestID, 4242, b"ping", 1, [b"list"],
                        [b"dictionary"])
    with pytest.raises(Exception, match="Invalid Object ID"):
        await d.addTimeout(10, reactor)
    await stillServes(raw)


@pytest_twisted.ensureDeferred
async def test_tooDeepIsAnErrorNotACrash(target):
    server, port, raw, bystander = target
    nested = [b"list"]
    for _ in range(200):
        nested = [b"list", nested]
    error = await refused(raw.send(b"hello", [b"list", nested]), errors.LimitExceeded)
    assert "50 levels" in str(error)
    await stillServes(raw)


@pytest_twisted.ensureDeferred
async def test_tooLargeMessageClosesOnlyThatConnection(target):
    server, port, raw, bystander = target
    lost = defer.Deferred()
    raw.broker.notifyOnDisconnect(lambda: lost.callback(None))
    # 4 x 500 KB strings: each token under banana's limit, the message over 1 MB.
    raw.send(b"hello", [b"list"] + [b"x" * 500_000] * 4).addErrback(lambda f: None)
    await lost.addTimeout(10, reactor)
    await stillServes(bystander)


class Spray(protocol.Protocol):
    """
    Writes its payload and half-closes, so that it ends only when the server
    has read everything and closed its side: a spray cannot run ahead of the
    server, and no connection outlives its case.
    """

    def __init__(self, payload: bytes, done: defer.Deferred) -> None:
        self.payload, self.done = payload, done

    def connectionMade(self) -> None:
        self.transport.write(self.payload)
        self.transport.loseWriteConnection()

    def connectionLost(self, reason) -> None:
        self.done.callback(None)


async def spray(port: int, payload: bytes) -> None:
    done: defer.Deferred = defer.Deferred()
    await TCP4ClientEndpoint(reactor, "127.0.0.1", port).connect(
        protocol.Factory.forProtocol(lambda: Spray(payload, done)))
    await done.addTimeout(10, reactor)


def encode(sexp) -> bytes:
    out = []
    encoder = banana.Banana()
    encoder.setPrefixLimit(64)
    encoder.currentDialect = b"none"
    encoder._encode(sexp, out.append)
    return b"".join(out)


# A valid opening (banana's dialect choice and PB's version), then the fuzz.
_PREFIX = encode(b"pb") + encode([b"version", 6])
_VALID = [
    [b"message", 1, b"root", b"interfaces", 1, [b"list"], [b"dictionary"]],
    [b"message", 2, b"root", b"hello", 1, [b"list", [b"dictionary"]], [b"dictionary"]],
    [b"decref", 1], [b"decache", 3], [b"answer", 9, 1], [b"cachemessage", 1, 1, b"x", 0,
                                                          [b"list"], [b"dictionary"]],
]

_atoms = st.one_of(st.binary(max_size=20), st.integers(-2**70, 2**70),
                   st.sampled_from([b"list", b"tuple", b"dictionary", b"reference",
                                    b"dereference", b"unicode", b"remote", b"local",
                                    b"cached", b"lcache", b"aurora.ref", b"message"]))
_sexps = st.recursive(_atoms, lambda inner: st.lists(inner, max_size=6), max_leaves=30)


@st.composite
def payloads(draw) -> bytes:
    kind = draw(st.integers(0, 2))
    if kind == 0:  # raw bytes
        return draw(st.binary(max_size=300))
    if kind == 1:  # valid framing, invalid content
        return _PREFIX + encode(draw(_sexps))
    # a valid message, mutated
    data = bytearray(_PREFIX + encode(draw(st.sampled_from(_VALID))))
    for _ in range(draw(st.integers(1, 4))):
        data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
    return bytes(data)


def generate(count: int) -> list[bytes]:
    """C{count} payloads, the same every run (hypothesis as the generator)."""
    out: list[bytes] = []

    @settings(max_examples=count, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    @given(payloads())
    def gather(payload: bytes) -> None:
        out.append(payload)

    gather()
    return out


@pytest_twisted.ensureDeferred
async def test_fuzzTheWire():
    """
    Thousands of malformed connections against a server process: each is
    refused, the server still serves, and its own memory (not the test
    runner's) barely grows.
    """
    cases = generate(int(os.environ.get("AURORA_FUZZ_CASES", "2000")))
    server = await ServerProcess.start()
    pid = server.transport.pid
    client = RawClient()
    try:
        before = memory(pid)["VmRSS"]
        resetPeak(pid)
        for payload in cases:
            await spray(server.port, payload)
        # Every hostile connection is gone, and the server still serves.
        await client.connect(server.port)
        assert await client.view.callRemote("interfaces") == [
            "tests.app.IAdmin", "tests.app.IUserManager"]
        grown = memory(pid)["VmHWM"] - before
    finally:
        await client.close()
        await server.kill()
    print(f"{len(cases)} cases; the server's peak memory grew by {grown} KiB")
    assert len(cases) >= 1000
    assert grown < 32 * 1024  # KiB
