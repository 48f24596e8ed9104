"""
Login that costs an attacker, not the server (issue #11): hashing in a
bounded pool off the reactor thread, one hash per attempt whoever the user,
failures answered later and later (never locked out), refusals logged at a
bounded rate, and a client that never sends its password without TLS.

Real TCP on 127.0.0.1 throughout; delays run on an injected Clock, and a
test waits for the event it needs (a delay being scheduled, a hash starting),
never for time to pass.
"""

from __future__ import annotations

import hashlib
import os
import threading

import pytest
import pytest_twisted
from twisted.cred.credentials import Anonymous, UsernamePassword
from twisted.internet import defer, reactor, task
from twisted.internet.endpoints import TCP4ClientEndpoint, clientFromString
from twisted.logger import Logger, formatEvent

from aurora import Client, Registry, Server, _broker, auth, errors
from aurora.remote import wrap
from tests.app import IUserManager, UserManager
from tests.helpers import (BIN, makeAuthority, RecordingProxy, ROOT, runCommand)

QUIET = dict(heartbeat=None, reconnectDelay=0.05, maxReconnectDelay=0.2,
             connectTimeout=10)
SAFETY = 30  # seconds: only so that a broken test fails instead of hanging
SCRYPT = (2**14, 8, 1)


# -- helpers ----------------------------------------------------------------------------

class WatchedClock(task.Clock):
    """A Clock that says when something is scheduled on it."""

    def __init__(self) -> None:
        super().__init__()
        self._watchers: list[tuple[float, defer.Deferred]] = []

    def callLater(self, delay, f, *args, **kw):
        call = super().callLater(delay, f, *args, **kw)
        for watcher in list(self._watchers):
            limit, d = watcher
            if delay <= limit:
                # Told once the caller has the call in hand, not in the middle.
                self._watchers.remove(watcher)
                reactor.callLater(0, d.callback, (delay, call))
        return call

    def scheduled(self, within: float = 5.0) -> defer.Deferred:
        """(delay, call) of the next call scheduled at most C{within} ahead."""
        d: defer.Deferred = defer.Deferred()
        self._watchers.append((within, d))
        return d.addTimeout(SAFETY, reactor)


class Counting:
    """A check function that counts hashes and where they ran."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []  # (thread name, stored hash)
        self.reactorThread = threading.get_ident()
        self.onReactorThread = 0

    def __call__(self, password: bytes, stored: str) -> bool:
        if threading.get_ident() == self.reactorThread:
            self.onReactorThread += 1
        self.calls.append((threading.current_thread().name, stored))
        return auth.checkPassword(password, stored)


class Blocking(Counting):
    """Hashes only once released; says (on the reactor) when one has begun."""

    def __init__(self) -> None:
        super().__init__()
        self.release = threading.Event()
        self.began: defer.Deferred = defer.Deferred()

    def __call__(self, password: bytes, stored: str) -> bool:
        if not self.began.called:
            reactor.callFromThread(
                lambda: self.began.called or self.began.callback(None))
        self.release.wait(SAFETY)  # bounded: the test releases it
        return super().__call__(password, stored)


@pytest.fixture
def scryptCalls(monkeypatch):
    """Every scrypt call from now on, as its (n, r, p)."""
    calls: list[tuple[int, int, int]] = []
    real = hashlib.scrypt

    def counting(password, *, salt, n, r, p, dklen=64, **kw):
        calls.append((n, r, p))
        return real(password, salt=salt, n=n, r=r, p=p, dklen=dklen, **kw)

    monkeypatch.setattr(hashlib, "scrypt", counting)
    return calls


@pytest.fixture(scope="module")
def passwd(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("login") / "passwd")
    auth.setPassword(path, "alice", "secret")
    auth.setPassword(path, "relay.example", None)  # certificate only
    return path


def loginPoolThreads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if "aurora-login" in t.name]


class Connection:
    """One raw aurora connection: login calls on its root, nothing else."""

    @classmethod
    async def open(cls, port: int, endpoint: str | None = None) -> Connection:
        self = cls()
        self.factory = _broker.ClientFactory(wrap, callTimeout=SAFETY, clock=reactor)
        if endpoint is None:
            await TCP4ClientEndpoint(reactor, "127.0.0.1", port).connect(self.factory)
        else:
            await clientFromString(reactor, endpoint).connect(self.factory)
        self.root = await self.factory.getRootObject().addTimeout(SAFETY, reactor)
        self.broker = self.root.broker
        return self

    def login(self, user, password) -> defer.Deferred:
        return self.root.callRemote("login", user, password)

    async def close(self) -> None:
        if not self.broker.disconnected:
            done: defer.Deferred = defer.Deferred()
            self.broker.notifyOnDisconnect(lambda: done.callback(None))
            self.broker.close()
            await done.addTimeout(SAFETY, reactor)


async def refused(d: defer.Deferred, kind: type = errors.LoginFailed) -> str:
    """The message of the LoginFailed (or C{kind}) that C{d} fails with."""
    with pytest.raises(kind) as e:
        await d
    return str(e.value)


def registry() -> Registry:
    r = Registry()
    r.register(IUserManager, UserManager())
    return r


class Holder:
    """Stands for a connection (weakly referenced by the Authenticator)."""


# -- one hash per attempt, off the reactor thread ---------------------------------------

@pytest_twisted.ensureDeferred
async def test_oneHashPerAttemptWhateverTheUser(passwd, scryptCalls):
    """
    Right password, wrong password, unknown user, certificate-only user:
    exactly one scrypt each, with the same parameters, in the pool's
    threads; the unknown and certificate-only users against the dummy hash.
    """
    check = Counting()
    authenticator = auth.Authenticator(auth.portal(passwd), clock=WatchedClock(),
                                       check=check, firstDelay=0)
    alice = auth.readPasswordFile(passwd)["alice"].hash
    try:
        identity = await authenticator.login(UsernamePassword(b"alice", b"secret"),
                                             connection=Holder(), address="10.0.0.1")
        assert identity.name == "alice"
        for user in (b"alice", b"mallory", b"relay.example"):
            message = await refused(authenticator.login(
                UsernamePassword(user, b"wrong"), connection=Holder(), address="10.0.0.1"))
            assert message == (f"login refused for user {user.decode()!r}: unknown, "
                               "or the wrong password")
    finally:
        authenticator.stop()
    assert [stored for _, stored in check.calls] == [
        alice, alice, auth._DUMMY_HASH, auth._DUMMY_HASH]
    assert scryptCalls == [SCRYPT] * 4
    assert check.onReactorThread == 0
    assert all(name.startswith("PoolThread-aurora-login") for name, _ in check.calls)
    assert not loginPoolThreads(), "stop() left the pool's threads running"


@pytest_twisted.ensureDeferred
async def test_serverHashesOnceInItsPoolOverTLS(tmp_path, passwd, scryptCalls):
    """Through a real Server over TLS: the same, one hash per attempt."""
    paths = makeAuthority(tmp_path)
    server = Server(registry(), auth.portal(passwd), loginDelay=0)
    check = server.authenticator.check = Counting()
    port = (await server.listen(
        f"ssl:0:privateKey={paths['serverKey']}:certKey={paths['serverCert']}"
        ":interface=127.0.0.1")).getHost().port
    endpoint = f"tls:localhost:{port}:trustRoots={paths['trust']}"
    clients = []
    try:
        for user, password in [(b"alice", b"secret"), (b"alice", b"wrong"),
                               (b"mallory", b"secret"), (b"relay.example", b"x")]:
            client = Client(endpoint, UsernamePassword(user, password), **QUIET)
            clients.append(client)
            try:
                await client.getRegistry()
                outcome = "in"
            except errors.LoginFailed:
                outcome = "refused"
            assert outcome == ("in" if password == b"secret" and user == b"alice"
                               else "refused")
    finally:
        for client in clients:
            await client.stop()
        await server.stop()
    assert len(check.calls) == 4 and scryptCalls == [SCRYPT] * 4
    assert check.onReactorThread == 0
    assert [s == auth._DUMMY_HASH for _, s in check.calls] == [False, False, True, True]


# -- failures slowed down: per connection, per address, capped --------------------------

def test_throttleGrowsCapsDecaysAndForgetsTheOldest():
    clock = task.Clock()
    throttle = auth.Throttle(clock, firstDelay=0.25, maxDelay=2.0, decay=10.0,
                             maxAddresses=3)
    # One connection from one address: doubling, then capped.
    assert [throttle.failed(n, "10.0.0.1") for n in range(1, 8)] == \
        [0.25, 0.5, 1.0, 2.0, 2.0, 2.0, 2.0]
    # A new connection from that address is slowed down by the address ...
    assert throttle.failed(1, "10.0.0.1") == 2.0
    # ... whose failures are forgotten one per 10 s (it holds at most 4).
    assert throttle.addressFailures("10.0.0.1") == 4
    clock.advance(30)
    assert throttle.addressFailures("10.0.0.1") == pytest.approx(1)
    assert throttle.failed(1, "10.0.0.1") == 0.5
    clock.advance(60)
    assert throttle.failed(1, "10.0.0.1") == 0.25
    # A connection's own failures count even from a fresh address.
    assert throttle.failed(4, "10.0.0.2") == 2.0
    assert throttle.failed(1, "10.0.0.3") == 0.25
    # One IPv6 /64 is one address; an IPv4-mapped address is the IPv4 one.
    assert throttle.failed(1, "2001:db8::1") == 0.25
    assert throttle.failed(1, "2001:db8::ffff") == 0.5
    assert throttle.addressFailures("2001:db8:0:1::1") == 0
    # At most 3 addresses remembered: the oldest went.
    assert len(throttle) == 3
    assert throttle.addressFailures("10.0.0.1") == 0
    assert throttle.failed(1, "::ffff:10.0.0.3") == 0.5


@pytest_twisted.ensureDeferred
async def test_delaysGrowAndCapPerConnectionAndPerAddress(passwd):
    """
    Over one real connection, each failed attempt's answer is held back for
    0.25, 0.5, 1, 2, 2 s of the server's clock and not a moment less; a
    right password is answered at once and resets the connection's count,
    not the address's; a new connection from the address is slowed down by
    it, and the address's failures decay with time.
    """
    clock = WatchedClock()
    # (Login and idle timeouts far off: this clock jumps minutes ahead.)
    server = Server(registry(), auth.portal(passwd), allowInsecureLogin=True,
                    loginTimeout=1000, idleTimeout=1000, clock=clock)
    port = (await server.listen("tcp:0:interface=127.0.0.1")).getHost().port
    connections = []

    async def failOnce(connection: Connection, expected: float) -> None:
        scheduled = clock.scheduled()
        answer = connection.login("alice", "wrong")
        delay, held = await scheduled
        assert delay == expected
        clock.advance(expected - 0.01)
        assert held.active()
        # A round trip on the same connection: had the failure been answered,
        # its answer would have come first.
        await connection.root.callRemote("ping")
        assert not answer.called
        clock.advance(0.01)
        assert not held.active()
        assert "login refused for user 'alice'" in await refused(answer)

    try:
        first = await Connection.open(port)
        connections.append(first)
        for expected in (0.25, 0.5, 1.0, 2.0, 2.0):
            await failOnce(first, expected)
        # The right password: answered without the clock moving.
        await first.login("alice", "secret").addTimeout(SAFETY, reactor)
        # The connection starts again, but the address still weighs.
        await failOnce(first, 2.0)
        second = await Connection.open(port)
        connections.append(second)
        await failOnce(second, 2.0)
        clock.advance(35)  # the address has forgotten most of its failures
        await failOnce(second, 0.5)  # the connection's own second failure
        third = await Connection.open(port)
        connections.append(third)
        clock.advance(100)
        await failOnce(third, 0.25)
    finally:
        for connection in connections:
            await connection.close()
        await server.stop()


@pytest_twisted.ensureDeferred
async def test_oneAttemptAtATimePerConnection(passwd):
    """Pipelined attempts on one connection: the second is refused at once."""
    clock = WatchedClock()
    server = Server(registry(), auth.portal(passwd), allowInsecureLogin=True,
                    clock=clock)
    check = server.authenticator.check = Counting()
    port = (await server.listen("tcp:0:interface=127.0.0.1")).getHost().port
    connection = await Connection.open(port)
    try:
        scheduled = clock.scheduled()
        first = connection.login("alice", "wrong1")
        second = connection.login("alice", "wrong2")
        assert "already in progress on this connection" in await refused(second)
        assert (await scheduled)[0] == 0.25
        clock.advance(0.25)
        await refused(first)
        assert len(check.calls) == 1  # the refused one cost no hash
    finally:
        await connection.close()
        await server.stop()


# -- a bounded pool: busy is refused at once --------------------------------------------

@pytest_twisted.ensureDeferred
async def test_busyPoolRefusesAtOnce(passwd):
    """
    One thread, one waiting place: a third attempt while both are taken is
    refused at once, unhashed; once they are done, attempts are taken again.
    """
    check = Blocking()
    authenticator = auth.Authenticator(auth.portal(passwd), clock=WatchedClock(),
                                       threads=1, maxWaiting=1, check=check)
    creds = UsernamePassword(b"alice", b"secret")
    try:
        hashing = authenticator.login(creds, connection=Holder(), address="10.0.0.1")
        waiting = authenticator.login(creds, connection=Holder(), address="10.0.0.2")
        assert authenticator.hashing == 2
        third = authenticator.login(creds, connection=Holder(), address="10.0.0.3")
        assert third.called  # at once
        # Not LoginFailed, which a Client takes as final: it retries this.
        assert "the server is busy" in await refused(third, errors.LimitExceeded)
        await check.began
        check.release.set()
        assert (await hashing).name == (await waiting).name == "alice"
        assert (await authenticator.login(creds, connection=Holder(),
                                          address="10.0.0.3")).name == "alice"
    finally:
        check.release.set()
        authenticator.stop()
    assert len(check.calls) == 3


@pytest_twisted.ensureDeferred
async def test_busyServerRefusesOverTheWire(passwd):
    server = Server(registry(), auth.portal(passwd), allowInsecureLogin=True,
                    loginThreads=1, maxWaitingLogins=0)
    check = server.authenticator.check = Blocking()
    port = (await server.listen("tcp:0:interface=127.0.0.1")).getHost().port
    first = await Connection.open(port)
    second = await Connection.open(port)
    try:
        answer = first.login("alice", "secret")
        await check.began  # its hash has the one thread
        message = await refused(second.login("alice", "secret"), errors.LimitExceeded)
        assert message == "the server is busy checking other logins; try again shortly"
        check.release.set()
        await answer.addTimeout(SAFETY, reactor)
    finally:
        check.release.set()
        await first.close()
        await second.close()
        await server.stop()
    assert len(check.calls) == 1


@pytest_twisted.ensureDeferred
async def test_stopAnswersHeldFailuresAndStopsThePool(passwd):
    clock = WatchedClock()
    server = Server(registry(), auth.portal(passwd), allowInsecureLogin=True,
                    clock=clock)
    port = (await server.listen("tcp:0:interface=127.0.0.1")).getHost().port
    connection = await Connection.open(port)
    try:
        scheduled = clock.scheduled()
        answer = connection.login("alice", "wrong")
        _, held = await scheduled
        assert loginPoolThreads()
        await server.stop()
        assert not held.active()  # the answer went at stop, not 0.25 s later
        assert not loginPoolThreads()
        with pytest.raises((errors.LoginFailed, errors.ConnectionLost)):
            await answer
    finally:
        await server.stop()
        await connection.close()


# -- refusals logged, rate-limited ------------------------------------------------------

@pytest_twisted.ensureDeferred
async def test_refusalsAreLoggedOncePerAddressPerInterval(passwd):
    events: list[dict] = []
    clock = task.Clock()
    authenticator = auth.Authenticator(
        auth.portal(passwd), clock=clock, firstDelay=0, logInterval=60,
        log=Logger(namespace="test", observer=events.append))

    async def fail(address: str) -> None:
        await refused(authenticator.login(UsernamePassword(b"alice", b"x"),
                                          connection=Holder(), address=address,
                                          peer=f"{address}:4000"))

    try:
        for _ in range(5):
            await fail("10.0.0.1")
        await fail("10.0.0.2")
        lines = [formatEvent(e) for e in events]
        assert lines == [
            "login refused for user 'alice' from 10.0.0.1:4000 (answered after 0.00 s)",
            "login refused for user 'alice' from 10.0.0.2:4000 (answered after 0.00 s)"]
        clock.advance(60)
        await fail("10.0.0.1")
        assert formatEvent(events[-1]).endswith("(and 4 more like it)")
        assert len(events) == 3
        assert not any("log_failure" in e for e in events)  # no traceback
    finally:
        authenticator.stop()


# -- the client keeps its password on plain TCP ----------------------------------------

@pytest_twisted.ensureDeferred
async def test_clientNeverSendsAPasswordWithoutTLS(passwd):
    """
    Through a recording proxy on plain TCP, to a server that would even take
    it: the client refuses at once, with one line naming the endpoint and
    the fix, and the password never crosses; allowInsecureLogin=True does
    send it (so the proxy does see what crosses), and logs in.
    """
    password = b"secret"
    server = Server(registry(), auth.portal(passwd), allowInsecureLogin=True)
    check = server.authenticator.check = Counting()
    port = (await server.listen("tcp:0:interface=127.0.0.1")).getHost().port
    proxy = RecordingProxy(port)
    proxyPort = await proxy.start()
    endpoint = f"tcp:127.0.0.1:{proxyPort}"
    careful = Client(endpoint, UsernamePassword(b"alice", password), **QUIET)
    careless = Client(endpoint, UsernamePassword(b"alice", password),
                      allowInsecureLogin=True, **QUIET)
    try:
        with pytest.raises(errors.LoginFailed) as e:
            await careful.getRegistry()
        message = str(e.value)
        assert message == (
            f"not sending the password to {endpoint}: the connection is not TLS; "
            "connect with tls: (e.g. tls:HOST:PORT:trustRoots=DIR) or pass "
            "allowInsecureLogin=True for local development")
        await careful.stop()
        assert b"aurora" in proxy.captured  # the handshake crossed ...
        assert password not in proxy.captured  # ... the password did not
        assert b"alice" not in proxy.captured
        assert check.calls == []
        with pytest.raises(errors.LoginFailed):  # and it does not try again
            await careful.getRegistry()

        remote = await careless.getRegistry()
        assert await remote.interfaces() == ["tests.app.IUserManager"]
        assert password in proxy.captured
        assert len(check.calls) == 1
    finally:
        await careful.stop()
        await careless.stop()
        await proxy.stop()
        await server.stop()


@pytest_twisted.ensureDeferred
async def test_clientWithoutCredentialsNeedsNoTLS(passwd):
    """Anonymous access sends no secret: no TLS needed, nothing refused early."""
    server = Server(registry(), auth.portal(passwd, anonymous=True))
    port = (await server.listen("tcp:0:interface=127.0.0.1")).getHost().port
    client = Client(f"tcp:127.0.0.1:{port}", **QUIET)
    try:
        remote = await client.getRegistry()
        assert await remote.interfaces() == ["tests.app.IUserManager"]
    finally:
        await client.stop()
        await server.stop()


# -- the command line and twistd --------------------------------------------------------

@pytest_twisted.ensureDeferred
async def test_cliAllowInsecureLogin(passwd, tmp_path):
    server = Server(registry(), auth.portal(passwd), allowInsecureLogin=True)
    port = (await server.listen("tcp:0:interface=127.0.0.1")).getHost().port
    secret = tmp_path / "secret"
    secret.write_text("secret\n")
    aurora = os.path.join(BIN, "aurora")
    common = ("--timeout", "10", "--user", "alice", "--password-file", str(secret))
    try:
        out, err, code = await runCommand(aurora, *common, "ls",
                                          f"tcp:127.0.0.1:{port}")
        assert code == 3, err
        assert b"is not TLS" in err and b"--allow-insecure-login" in err
        assert b"allowInsecureLogin=True" not in err
        assert err.count(b"\n") == 1
        out, err, code = await runCommand(aurora, *common, "--allow-insecure-login",
                                          "ls", f"tcp:127.0.0.1:{port}")
        assert code == 0, err
        assert b"tests.app.IUserManager" in out
    finally:
        await server.stop()


def test_twistdOptionsForLoginAndErrorDetail(tmp_path):
    from aurora import tap

    options = tap.Options()
    options.parseOptions(["--listen", "tcp:0:interface=127.0.0.1",
                          "--error-detail", "message"])
    assert tap.RegistryService(options).server.factory.errorDetail == "message"
    options = tap.Options()
    options.parseOptions(["--listen", "tcp:0:interface=127.0.0.1"])
    assert tap.RegistryService(options).server.factory.errorDetail == "type"

    secret = tmp_path / "secret"
    secret.write_text("s3cret\n")
    options = tap.Options()
    options.parseOptions(["--listen", "tcp:0:interface=127.0.0.1",
                          "--upstream", "tcp:127.0.0.1:1", "--upstream-user", "relay",
                          "--upstream-password-file", str(secret),
                          "--upstream-insecure-login"])
    assert tap.RegistryService(options).relay.client._allowInsecureLogin is True
    options = tap.Options()
    options.parseOptions(["--listen", "tcp:0:interface=127.0.0.1",
                          "--upstream", "tcp:127.0.0.1:1"])
    assert tap.RegistryService(options).relay.client._allowInsecureLogin is False


@pytest_twisted.ensureDeferred
async def test_twistdRefusesABadErrorDetail():
    out, err, code = await runCommand(
        os.path.join(BIN, "twistd"), "-n", "--pidfile=", "registry",
        "--listen", "tcp:0:interface=127.0.0.1", "--error-detail", "everything",
        env=dict(os.environ, PYTHONPATH=ROOT))
    assert code != 0
    assert "--error-detail must be type or message, not 'everything'" in err.decode()
    assert b"Traceback" not in err


def test_anonymousAndCertificateCredentialsAreDescribed():
    assert auth._describe(Anonymous()) == "anonymous access"
    assert auth._describe(auth.PeerCertificate("relay.example")) == \
        "certificate 'relay.example'"
    long = auth._describe(UsernamePassword(b"x" * 5000, b""))
    assert len(long) < 120 and long.endswith("...'")
