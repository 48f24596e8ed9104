"""
Chains with every hop in its own process; relays that have never imported
the application; killing and restarting the middle relay and the origin; a
relay run by twistd: what it logs, how it stops; python -m aurora.relay.
"""

from __future__ import annotations

import os
import re
import socket
import sys

import pytest
import pytest_twisted
from twisted.internet import defer, protocol, reactor
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.logger import formatEvent

from aurora import Client, Registry, Server, errors, signals
from tests.app import IAdmin, IUserManager, NotAllowed, User, UserManager, UserModel
from tests.helpers import RelayProcess, ServerProcess, SignalLog, TwistdProcess

FAST = ["--heartbeat", "0.5"]
CLIENT = dict(heartbeat=0.5, reconnectDelay=0.05, maxReconnectDelay=0.2)


class ProcessChain:
    async def start(self, hops: int, tmp_path) -> None:
        self.origin = await ServerProcess.start()
        self.relays: list[RelayProcess] = []
        port = self.origin.port
        for _ in range(hops):
            relay = await RelayProcess.start(port, 0, *FAST, workdir=str(tmp_path))
            self.relays.append(relay)
            port = relay.port
        self.client = Client(f"tcp:127.0.0.1:{port}", **CLIENT)

    async def stop(self) -> None:
        await self.client.stop()
        for proc in [*self.relays, self.origin]:
            await proc.kill()


async def startChain(hops, tmp_path) -> ProcessChain:
    chain = ProcessChain()
    await chain.start(hops, tmp_path)
    return chain


@pytest.mark.parametrize("hops", [1, 2, 3])
@pytest_twisted.ensureDeferred
async def test_chainOfProcesses(hops, tmp_path):
    chain = await startChain(hops, tmp_path)
    try:
        registry = await chain.client.getRegistry()
        users = await registry.getManager(IUserManager)
        # Copies of a class the relays never imported arrive as that class.
        alice = await users.getUser("alice")
        assert type(alice) is User and alice.name == "alice"
        # ... and travel the other way through the relays unchanged.
        assert await users.addUser(User(name="eve", email="e@x")) == "User"
        assert await users.getUser("eve") == User(name="eve", email="e@x")
        with pytest.raises(NotAllowed):
            await users.fail("app")
        admin = await users.getAdmin()
        assert await admin.ping() == "pong"
        mirror = await users.getModel("alice")
        assert type(mirror) is UserModel
        changes = SignalLog(signals.changed, mirror)
        try:
            arrived = changes.next()
            await users.setOnline("alice", True)
            await arrived
            assert mirror.online is True
        finally:
            changes.close()
    finally:
        await chain.stop()


@pytest_twisted.ensureDeferred
async def test_killAndRestartTheMiddleRelay(tmp_path):
    chain = await startChain(3, tmp_path)
    direct = Client(f"tcp:127.0.0.1:{chain.origin.port}", **CLIENT)
    try:
        users = await (await chain.client.getRegistry()).getManager(IUserManager)
        atOrigin = await (await direct.getRegistry()).getManager(IUserManager)
        mirror = await users.getModel("bob")
        changes = SignalLog(signals.changed, mirror)
        try:
            middle = chain.relays[1]
            await middle.kill()
            # The end client's own link (to the last relay) stays up, and its
            # calls fail at once while the chain is broken.
            with pytest.raises(errors.ConnectionLost):
                await users.echo(1)
            assert chain.client.connected
            # A change at the origin during the outage ...
            await atOrigin.setOnline("bob", True)
            healed = changes.next()
            chain.relays[1] = await RelayProcess.start(
                middle.upstreamPort, middle.port, *FAST, workdir=str(tmp_path))
            # ... reaches the same mirror once the last relay has resynced.
            await healed
            assert mirror.online is True
            # The same wrapper works again, and so do changes after the outage.
            assert await users.echo(2) == 2
            after = changes.next()
            await users.setOnline("bob", False)
            await after
            assert mirror.online is False
            assert [e["value"] for e in changes.events] == [True, False]
        finally:
            changes.close()
    finally:
        await direct.stop()
        await chain.stop()


@pytest_twisted.ensureDeferred
async def test_killAndRestartTheOrigin(tmp_path):
    chain = await startChain(2, tmp_path)
    try:
        users = await (await chain.client.getRegistry()).getManager(IUserManager)
        mirror = await users.getModel("alice")
        changes = SignalLog(signals.changed, mirror)
        try:
            origin = chain.origin
            await origin.kill()
            with pytest.raises(errors.ConnectionLost):
                await users.echo(1)
            healed = changes.next()
            # The new origin starts with alice online: a change made "while
            # away", which the relays' resync carries to the end mirror.
            chain.origin = await ServerProcess.start(origin.port, "--online", "alice")
            await healed
            assert mirror.online is True
            assert await users.echo(2) == 2
            assert chain.client.connected
        finally:
            changes.close()
    finally:
        await chain.stop()


@pytest_twisted.ensureDeferred
async def test_bareRelayNeedsNoFlagNorApplicationCode(tmp_path):
    """
    Server(client.registry), in a process without the application's modules,
    passes copies, models and errors on: serving the registry is what makes
    the client relay its upstream's types (no opaque=True).
    """
    origin = await ServerProcess.start()
    relay = await RelayProcess.start(origin.port, workdir=str(tmp_path), bare=True)
    client = Client(f"tcp:127.0.0.1:{relay.port}", **CLIENT)
    try:
        users = await (await client.getRegistry()).getManager(IUserManager)
        alice = await users.getUser("alice")
        assert type(alice) is User and alice.name == "alice"
        model = await users.getModel("alice")
        assert type(model) is UserModel
        with pytest.raises(NotAllowed):
            await users.fail("app")
    finally:
        await client.stop()
        await relay.kill()
        await origin.kill()


# -- a relay run by twistd: what it logs, and how it stops


class _Peer(protocol.Protocol):
    def __init__(self, upstream: "FakeUpstream") -> None:
        self.upstream = upstream
        self.gone: defer.Deferred = defer.Deferred()

    def connectionMade(self) -> None:
        self.upstream.peers.append(self)
        self.upstream.attempts += 1
        waiting = [(n, d) for n, d in self.upstream.waiting if self.upstream.attempts >= n]
        for n, d in waiting:
            self.upstream.waiting.remove((n, d))
            d.callback(None)
        if self.upstream.close:
            self.transport.loseConnection()

    def connectionLost(self, reason) -> None:
        self.upstream.peers.remove(self)
        self.gone.callback(None)


class FakeUpstream:
    """
    A TCP port on 127.0.0.1 that is not aurora: it counts connection
    attempts and either closes each at once (C{close}) or says nothing.
    """

    def __init__(self, close: bool) -> None:
        self.close = close
        self.attempts = 0
        self.peers: list[_Peer] = []
        self.waiting: list[tuple[int, defer.Deferred]] = []

    async def listen(self, port: int = 0) -> int:
        factory = protocol.Factory.forProtocol(lambda: _Peer(self))
        self.port = await TCP4ServerEndpoint(
            reactor, port, interface="127.0.0.1").listen(factory)
        return self.port.getHost().port

    def attempted(self, n: int) -> defer.Deferred:
        """Fires once C{n} attempts in all have reached this port."""
        d: defer.Deferred = defer.Deferred()
        if self.attempts >= n:
            d.callback(None)
        else:
            self.waiting.append((n, d))
        return d.addTimeout(30, reactor)

    async def stop(self) -> None:
        await self.port.stopListening()
        for peer in list(self.peers):
            peer.transport.loseConnection()
            await peer.gone


def refusedPort() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there: refused
    return port


class HoldingManager(UserManager):
    """slowEcho answers when the test says (no timer left behind)."""

    def __init__(self) -> None:
        super().__init__()
        self.held: list[defer.Deferred] = []

    def slowEcho(self, value, delay):
        self.held.append(defer.Deferred())
        return self.held[-1]


def origin() -> Server:
    manager = HoldingManager()
    registry = Registry()
    registry.register(IUserManager, manager)
    registry.register(IAdmin, manager.admin)
    return Server(registry)


def _text(event: dict) -> str:
    return formatEvent(event)


async def _event(proc: TwistdProcess, text: str) -> dict:
    """The first event whose format holds C{text}, already logged or next."""
    for event in proc.events:
        if text in event.get("log_format", ""):
            return event
    return await proc.waitFor(text)


def _level(event: dict) -> str:
    return (event.get("log_level") or {}).get("name", "")


@pytest.mark.parametrize("upstream", ["refused", "connecting", "up"])
@pytest_twisted.ensureDeferred
async def test_sigtermStopsARelayCleanly(upstream):
    """
    SIGTERM stops a relay whatever its upstream is doing (refusing, in the
    middle of the very first attempt while a client waits on it, or
    serving a call in progress): no traceback, no error logged, twistd's
    clean exit (it re-raises SIGTERM), one line saying it stopped.
    """
    server = silent = None
    if upstream == "refused":
        port = refusedPort()
    elif upstream == "connecting":  # accepts, never speaks: the attempt hangs
        silent = FakeUpstream(close=False)
        port = await silent.listen()
    else:
        server = origin()
        port = (await server.listen("tcp:0:interface=127.0.0.1")).getHost().port
    relay = await TwistdProcess.start(
        "--upstream", f"tcp:127.0.0.1:{port}", "--listen", "tcp:0:interface=127.0.0.1",
        # IAdmin of its own, answered without the upstream.
        "--setup", "tests.twistd_setup:registerLater")
    client = Client(f"tcp:127.0.0.1:{relay.port}", **CLIENT)
    pending = None
    try:
        registry = await client.getRegistry()
        if upstream == "refused":
            with pytest.raises(errors.ConnectionLost, match="refused"):
                await registry.getManager(IUserManager)
        elif upstream == "connecting":
            await silent.attempted(1)
            pending = registry.getManager(IUserManager)  # waits for the upstream
            # Answered in order on one connection: the relay is waiting now.
            assert await (await registry.getManager(IAdmin)).ping() == "pong"
        else:
            users = await registry.getManager(IUserManager)
            pending = users.slowEcho("never", 60)
            assert await users.echo(0) == 0  # the slow call has reached the origin
        ended = relay.ended
        relay.transport.signalProcess("TERM")
        reason = await ended
        if pending is not None:
            with pytest.raises(errors.ConnectionLost):
                await pending
        assert reason.signal == 15  # twistd's status for a clean SIGTERM stop
        assert b"Traceback" not in relay.errors, relay.errors
        bad = [_text(e) for e in relay.events
               if _level(e) in ("error", "critical") or "log_failure" in e]
        assert bad == []
        assert [e.get("log_format") for e in relay.events].count(
            "stopped relaying {upstream}") == 1
    finally:
        await client.stop()
        await relay.kill()
        if silent is not None:
            await silent.stop()
        if server is not None:
            await server.stop()
            for d in server._registry.lookup(IUserManager).held:
                d.callback(None)  # for a connection that is gone


@pytest_twisted.ensureDeferred
async def test_relayLogsWhyItsUpstreamIsUnreachableOncePerChange(tmp_path):
    """
    A relay retrying an unreachable upstream says why once, and again only
    when the reason changes, the upstream comes back or goes again: not at
    every retry.  Before it knows what its upstream offers, it does not log
    an empty list as if that were what it serves.
    """
    fake = FakeUpstream(close=True)  # each attempt closed at once
    port = await fake.listen()
    relay = await TwistdProcess.start(
        "--upstream", f"tcp:127.0.0.1:{port}", "--listen", "tcp:0:interface=127.0.0.1",
        "--heartbeat", "0.5", pythonpath=False, cwd=str(tmp_path))
    server = None
    try:
        await fake.attempted(4)
        await fake.stop()  # now refused
        await _event(relay, "cannot reach")
        refusedOnce = await relay.waitFor("cannot reach")  # the reason changed
        assert "refused" in refusedOnce["why"]
        server = origin()  # the upstream is up ...
        await server.listen(f"tcp:{port}:interface=127.0.0.1")
        await _event(relay, "relaying {interfaces}")
        gone = relay.waitFor("lost the connection")
        await server.stop()  # ... and goes again
        server = None
        await gone
        await relay.waitFor("cannot reach")
        # The client's own lines, ClientService's ("Scheduling retry ...")
        # and its factory's ("Starting factory ...").
        said = [e for e in relay.events if e.get("log_namespace", "").startswith(
            ("aurora.client", "twisted.application", "aurora._broker.ClientFactory"))]
        assert [(e["log_format"].split(" {")[0], e.get("why", "")[:40]) for e in said] == [
            ("cannot reach", "connected, but the aurora handshake fail"),
            ("cannot reach", "Connection was refused by other side: 11"),
            ("connected to", ""),
            ("lost the connection to", "Connection was closed cleanly."),
            ("cannot reach", "Connection was refused by other side: 11"),
        ]
        formats = relay.formats()
        assert "registry ready: {interfaces}" not in formats
        assert "relay ready, waiting for upstream {upstream}" in formats
        [relaying] = [e for e in relay.events
                      if e.get("log_format", "").startswith("relaying {interfaces}")]
        assert relaying["interfaces"] == ["tests.app.IAdmin", "tests.app.IUserManager"]
    finally:
        await relay.kill()
        if server is not None:
            await server.stop()


@pytest_twisted.ensureDeferred
async def test_allowedNameTheUpstreamDoesNotOfferIsWarnedAbout(tmp_path):
    server = origin()
    port = (await server.listen("tcp:0:interface=127.0.0.1")).getHost().port
    relay = await TwistdProcess.start(
        "--upstream", f"tcp:127.0.0.1:{port}", "--listen", "tcp:0:interface=127.0.0.1",
        "--allow", "tests.app.IUserManager", "--allow", "tests.app.IUserManagr",
        pythonpath=False, cwd=str(tmp_path))
    try:
        warning = await _event(relay, "does not offer")
        assert _text(warning) == (
            f"allowed tests.app.IUserManagr, which upstream tcp:127.0.0.1:{port} "
            "does not offer (it offers: tests.app.IAdmin, tests.app.IUserManager)")
        assert _level(warning) == "warn"
        relaying = await _event(relay, "relaying {interfaces}")
        assert relaying["interfaces"] == ["tests.app.IUserManager"]
        assert [e.get("interface") for e in relay.events].count(
            "tests.app.IUserManagr") == 1
    finally:
        await relay.kill()
        await server.stop()


class AliasProcess(protocol.ProcessProtocol):
    """C{python -m aurora.relay ...}; C{ready} fires with the port it serves on."""

    def __init__(self) -> None:
        self.output = self.errors = b""
        self.ready: defer.Deferred = defer.Deferred()
        self.ended: defer.Deferred = defer.Deferred()

    def outReceived(self, data: bytes) -> None:
        self.output += data
        found = re.search(rb"aurora serving .* port=(\d+)\)", self.output)
        if found and not self.ready.called:
            self.ready.callback(int(found.group(1)))

    def errReceived(self, data: bytes) -> None:
        self.errors += data

    def processEnded(self, reason) -> None:
        if not self.ready.called:
            self.ready.callback(None)
        self.ended.callback(reason.value)


def alias(*args: str) -> AliasProcess:
    proc = AliasProcess()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    reactor.spawnProcess(proc, sys.executable,
                         [sys.executable, "-m", "aurora.relay", *args], env=env, path="/")
    return proc


@pytest_twisted.ensureDeferred
async def test_deprecatedRelayCommandIsTwistdRegistry():
    """
    C{python -m aurora.relay} says, in one line, that it is deprecated and
    what to run instead, then is C{twistd registry}: it relays, and a port
    in use is one line and a non-zero exit.
    """
    server = origin()
    port = (await server.listen("tcp:0:interface=127.0.0.1")).getHost().port
    upstream = f"tcp:127.0.0.1:{port}"
    relay = alias("--upstream", upstream, "--listen", "tcp:0:interface=127.0.0.1")
    client = None
    try:
        relayPort = await relay.ready.addTimeout(30, reactor)
        assert relayPort, relay.errors
        assert relay.errors.decode().splitlines() == [
            "DeprecationWarning: python -m aurora.relay is deprecated; run: twistd -n "
            f"--pidfile= registry --upstream {upstream} --listen tcp:0:interface=127.0.0.1"]
        client = Client(f"tcp:127.0.0.1:{relayPort}", **CLIENT)
        users = await (await client.getRegistry()).getManager(IUserManager)
        assert await users.echo("through the alias") == "through the alias"

        taken = f"tcp:{relayPort}:interface=127.0.0.1"
        second = alias("--upstream", upstream, "--listen", taken)
        reason = await second.ended.addTimeout(30, reactor)
        assert reason.exitCode == 1
        lines = second.errors.decode().splitlines()
        assert lines[0].startswith("DeprecationWarning: python -m aurora.relay")
        assert lines[1:] == [f"twistd registry: cannot listen on {taken}: Couldn't "
                             f"listen on 127.0.0.1:{relayPort}: [Errno 98] Address "
                             "already in use."]
        relay.transport.signalProcess("TERM")
        assert (await relay.ended).signal == 15  # as twistd
    finally:
        if client is not None:
            await client.stop()
        if not relay.ended.called:
            relay.transport.signalProcess("KILL")
            await relay.ended
        await server.stop()
