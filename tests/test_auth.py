"""Login, per-interface access and connection limits, over real TLS."""

from __future__ import annotations

import pytest
import pytest_twisted
from twisted.cred.credentials import UsernamePassword
from twisted.internet import defer, protocol, reactor, task
from twisted.internet.endpoints import TCP4ClientEndpoint
from zope.interface import implementer

from aurora import Client, Registry, Server, auth, errors
from tests.app import Admin, IAdmin, IUserManager, UserManager
from tests.helpers import makeAuthority

QUIET = dict(heartbeat=None, reconnectDelay=0.05, maxReconnectDelay=0.2,
             connectTimeout=10)


@implementer(IUserManager, IAdmin)
class Both(UserManager):
    """One manager, two interfaces."""

    def ping(self):
        return "pong"


class Secured:
    def __init__(self, tmp_path, **serverOptions) -> None:
        self.paths = makeAuthority(tmp_path, "relay.example", "stranger")
        self.passwd = str(tmp_path / "passwd")
        auth.setPassword(self.passwd, "alice", "secret")  # everything
        auth.setPassword(self.passwd, "bob", "hunter2", ["tests.app.IUserManager"])
        auth.setPassword(self.passwd, "relay.example", None)  # certificate only
        self.registry = Registry()
        both = Both()
        self.registry.register(IUserManager, both)
        self.registry.register(IAdmin, both)
        self.serverOptions = serverOptions
        self.clients: list[Client] = []

    async def start(self, anonymous=False, mutual=False, **portalOptions):
        portal = auth.portal(self.passwd, anonymous=anonymous, **portalOptions)
        self.server = Server(self.registry, portal, **self.serverOptions)
        p = self.paths
        kind = "mtls" if mutual else "ssl"
        extra = f":caCerts={p['ca']}" if mutual else ""
        tls = await self.server.listen(
            f"{kind}:0:privateKey={p['serverKey']}:certKey={p['serverCert']}"
            f"{extra}:interface=127.0.0.1")
        self.tlsPort = tls.getHost().port
        plain = await self.server.listen("tcp:0:interface=127.0.0.1")
        self.plainPort = plain.getHost().port

    def client(self, credentials=None, *, tls=True, certificate=None, **kw) -> Client:
        if tls:
            endpoint = f"tls:localhost:{self.tlsPort}:trustRoots={self.paths['trust']}"
            if certificate:
                endpoint += (f":certificate={self.paths[certificate + 'Cert']}"
                             f":privateKey={self.paths[certificate + 'Key']}")
        else:
            endpoint = f"tcp:127.0.0.1:{self.plainPort}"
        client = Client(endpoint, credentials, **{**QUIET, **kw})
        self.clients.append(client)
        return client

    async def stop(self):
        for c in self.clients:
            await c.stop()
        await self.server.stop()


@pytest_twisted.async_yield_fixture()
async def secured(tmp_path):
    s = Secured(tmp_path)
    await s.start()
    yield s
    await s.stop()


@pytest_twisted.ensureDeferred
async def test_passwordLoginOverTLS(secured):
    registry = await secured.client(UsernamePassword(b"alice", b"secret")).getRegistry()
    assert await registry.interfaces() == ["tests.app.IAdmin", "tests.app.IUserManager"]
    users = await registry.getManager(IUserManager)
    assert await users.echo("in") == "in"


@pytest.mark.parametrize("user, password", [(b"alice", b"wrong"), (b"mallory", b"secret")])
@pytest_twisted.ensureDeferred
async def test_refusedLoginExposesNothing(secured, user, password):
    client = secured.client(UsernamePassword(user, password))
    with pytest.raises(errors.LoginFailed) as e:
        await client.getRegistry()
    # The same words for an unknown user and a wrong password.
    assert str(e.value) == (f"login refused for user {user.decode()!r}: unknown, "
                            "or the wrong password")
    assert not client.connected


@pytest_twisted.ensureDeferred
async def test_passwordOverPlainTCPIsRefused(secured):
    # The client does not send it (tests/test_login.py checks the bytes) ...
    client = secured.client(UsernamePassword(b"alice", b"secret"), tls=False)
    with pytest.raises(errors.LoginFailed, match="is not TLS"):
        await client.getRegistry()
    # ... and a client told it may is still refused by the server.
    client = secured.client(UsernamePassword(b"alice", b"secret"), tls=False,
                            allowInsecureLogin=True)
    with pytest.raises(errors.LoginFailed, match="encrypted connection"):
        await client.getRegistry()


@pytest_twisted.ensureDeferred
async def test_insecureLoginOnlyWhenAllowed(tmp_path):
    s = Secured(tmp_path, allowInsecureLogin=True)
    await s.start()
    try:
        registry = await s.client(UsernamePassword(b"bob", b"hunter2"), tls=False,
                                  allowInsecureLogin=True).getRegistry()
        assert await registry.interfaces() == ["tests.app.IUserManager"]
    finally:
        await s.stop()


@pytest_twisted.ensureDeferred
async def test_anonymousOffByDefault(secured):
    with pytest.raises(errors.LoginFailed, match="anonymous"):
        await secured.client(tls=False).getRegistry()


@pytest_twisted.ensureDeferred
async def test_anonymousWhenConfigured(tmp_path):
    s = Secured(tmp_path)
    await s.start(anonymous=True, anonymousInterfaces=["tests.app.IAdmin"])
    try:
        registry = await s.client(tls=False).getRegistry()
        assert await registry.interfaces() == ["tests.app.IAdmin"]
        assert await (await registry.getManager(IAdmin)).ping() == "pong"
    finally:
        await s.stop()


@pytest_twisted.ensureDeferred
async def test_perInterfaceViewWithoutExistenceLeak(secured):
    registry = await secured.client(UsernamePassword(b"bob", b"hunter2")).getRegistry()
    assert await registry.interfaces() == ["tests.app.IUserManager"]
    with pytest.raises(errors.UnknownInterface) as forbidden:
        await registry.getManager(IAdmin)
    with pytest.raises(errors.UnknownInterface) as missing:
        await registry.getManager("tests.app.INothing")
    assert str(forbidden.value).replace("IAdmin", "X") == \
        str(missing.value).replace("INothing", "X")
    # What bob may use is listed, and only that.
    assert str(missing.value) == ("no manager is registered under tests.app.INothing; "
                                  "offered: tests.app.IUserManager")
    users = await registry.getManager(IUserManager)
    # A manager returned by a method passes the same check: Admin is IAdmin,
    # which bob may not use, so it does not cross (and is not named).
    with pytest.raises(errors.UnknownInterface) as hidden:
        await users.getAdmin()
    assert "IUserManager.getAdmin returned a manager" in str(hidden.value)
    assert "IAdmin" not in str(hidden.value)


@pytest_twisted.ensureDeferred
async def test_portalAccessOverridesThePasswordFilesInterfaces(tmp_path):
    """
    C{portal(access=...)} maps a user to the interfaces it may use (None:
    all), over what the password file says.
    """
    s = Secured(tmp_path)
    await s.start(access={"alice": ["tests.app.IAdmin"], "bob": None})
    try:
        alice = await s.client(UsernamePassword(b"alice", b"secret")).getRegistry()
        assert await alice.interfaces() == ["tests.app.IAdmin"]
        with pytest.raises(errors.UnknownInterface, match="offered: tests.app.IAdmin$"):
            await alice.getManager(IUserManager)
        bob = await s.client(UsernamePassword(b"bob", b"hunter2")).getRegistry()
        assert await bob.interfaces() == ["tests.app.IAdmin", "tests.app.IUserManager"]
        assert await (await bob.getManager(IAdmin)).ping() == "pong"
    finally:
        await s.stop()


@pytest_twisted.ensureDeferred
async def test_referenceExposesOnlyTheInterfaceItWasObtainedUnder(secured):
    registry = await secured.client(UsernamePassword(b"alice", b"secret")).getRegistry()
    users = await registry.getManager(IUserManager)
    with pytest.raises(errors.NoSuchMethod):
        await users.callRemote("ping")  # Both implements IAdmin too
    assert await (await registry.getManager(IAdmin)).ping() == "pong"


@pytest_twisted.ensureDeferred
async def test_mutualTLSCertificateIsTheIdentity(tmp_path):
    s = Secured(tmp_path)
    await s.start(mutual=True)
    try:
        registry = await s.client(certificate="relay.example").getRegistry()
        assert await registry.interfaces() == ["tests.app.IAdmin",
                                               "tests.app.IUserManager"]
        # Signed by the CA, but not a known identity.
        with pytest.raises(errors.LoginFailed, match="stranger"):
            await s.client(certificate="stranger").getRegistry()
        # No client certificate: the TLS handshake itself fails.
        with pytest.raises(errors.ConnectionFailed):
            await s.client(connectTimeout=2).getRegistry()
    finally:
        await s.stop()


@pytest_twisted.ensureDeferred
async def test_loginAgainAfterReconnect(tmp_path):
    s = Secured(tmp_path)
    await s.start()
    try:
        client = s.client(UsernamePassword(b"bob", b"hunter2"))
        users = await (await client.getRegistry()).getManager(IUserManager)
        tlsPort = s.tlsPort
        await s.server.stop()
        s.server = Server(s.registry, auth.portal(s.passwd))
        p = s.paths
        await s.server.listen(f"ssl:{tlsPort}:privateKey={p['serverKey']}:"
                              f"certKey={p['serverCert']}:interface=127.0.0.1")
        registry = await client.whenConnected()
        assert await users.echo("again") == "again"
        assert await registry.interfaces() == ["tests.app.IUserManager"]
    finally:
        await s.stop()


class Idle(protocol.Protocol):
    def __init__(self):
        self.lost = defer.Deferred()

    def connectionLost(self, reason):
        self.lost.callback(None)


async def idleConnection(port):
    idle = Idle()
    await TCP4ClientEndpoint(reactor, "127.0.0.1", port).connect(
        protocol.Factory.forProtocol(lambda: idle))
    return idle


@pytest_twisted.ensureDeferred
async def test_loginTimeoutAndConnectionLimit():
    clock = task.Clock()
    registry = Registry()
    registry.register(IAdmin, Admin())
    server = Server(registry, loginTimeout=5, maxConnections=2, clock=clock)
    port = (await server.listen("tcp:0:interface=127.0.0.1")).getHost().port
    try:
        first = await idleConnection(port)
        second = await idleConnection(port)
        third = await idleConnection(port)
        # Over the limit: kept only to be told why (see test_limits), and
        # closed within 5 s if it does not ask.
        assert len(server._brokers) == 3 and server._refusing == 1
        assert not first.lost.called and not third.lost.called
        clock.advance(5)  # never logged in
        await defer.gatherResults(
            [first.lost, second.lost, third.lost]).addTimeout(10, reactor)
    finally:
        await server.stop()
