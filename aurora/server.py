"""
The server: publishes a registry (local or remote) over PB.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import IListeningPort, IStreamServerEndpoint
from twisted.logger import Logger
from twisted.spread import pb
from twisted.cred import credentials, error as credError
from twisted.internet.interfaces import ISSLTransport
from zope.interface import directlyProvides, implementer

from aurora import _schema, _types, _wire
from aurora.auth import ANONYMOUS_ALL, Identity, IIdentity, PeerCertificate
from aurora.errors import LoginFailed, UnknownInterface
from aurora.interfaces import IRegistry, IRegistryService, IRegistryView
from aurora.remote import wrap
from aurora.remoteable import Manager


@implementer(IRegistryService)
class RegistryService(Manager):
    """One connection's gate to the published registry (its PB root)."""

    log = Logger()

    def __init__(self, server: Server, broker: Any) -> None:
        self._server = server
        self._registry = server._registry
        self._broker = broker

    def hello(self, peer: Any) -> dict[str, Any]:
        _wire.checkVersion(peer, "client")
        self.log.info("client {peer} connected (aurora {version})",
                      peer=self._broker.transport.getPeer(), version=peer.get("aurora"))
        timeout = peer.get("timeout")
        if isinstance(timeout, (int, float)) and timeout > 0:
            # The client pings more often than this; silence means it is gone
            # (a partition, a dead host), and with it its observers.
            self._broker.watch(float(timeout))
        wanted = peer.get("referenceLimit")
        if isinstance(wanted, int) and wanted > self._broker.referenceLimit:
            self._broker.referenceLimit = min(wanted, self._server._maxReferenceLimit)
        return dict(_wire.versionInfo(), referenceLimit=self._broker.referenceLimit)

    def ping(self) -> None:
        return None

    async def login(self, username: Any, password: Any) -> RegistryView:
        identity = await self._server._authenticate(self._broker, username, password)
        self._broker.identity = identity
        self._server._loggedIn(self._broker)
        self.log.info("{peer} logged in as {who}", peer=self._broker.transport.getPeer(),
                      who=identity.name or "anonymous")
        return RegistryView(self._registry, identity)

    def types(self) -> Any:
        # A relay's registry waits until it has learned its upstream's types.
        learned = getattr(self._registry, "types", None)
        return learned() if learned is not None else _types.advertised()


@implementer(IRegistryView)
class RegistryView(Manager):
    """The registry as one identity may see it."""

    def __init__(self, registry: Any, identity: Identity) -> None:
        self._registry = registry
        self._identity = identity
        self._facets: dict[tuple[int, str], Facet] = {}

    def _allowed(self, name: str) -> bool:
        allowed = self._identity.interfaces
        return allowed is None or name in allowed

    async def getManager(self, name: Any) -> Manager:
        name = _schema.interfaceName(name)
        if not self._allowed(name):
            # Exactly what an interface that does not exist gets.
            raise UnknownInterface(f"no manager is registered under {name}",
                                   interface=name)
        manager = await self._registry.getManager(name)
        iface = _schema.findInterface(manager, name)
        if iface is None:
            return manager
        key = (id(manager), name)
        facet = self._facets.get(key)
        if facet is None or facet._manager is not manager:
            facet = self._facets[key] = Facet(manager, iface)
        return facet

    async def interfaces(self) -> list[str]:
        return [n for n in await self._registry.interfaces() if self._allowed(n)]


class Facet(Manager):
    """
    A manager as obtained under one interface: only that interface's
    methods are exposed, whatever else the manager implements.
    """

    def __init__(self, manager: Any, iface: Any) -> None:
        self._manager = manager
        directlyProvides(self, iface)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self._manager, name)

    def __repr__(self) -> str:
        return f"<facet {_schema.offeredInterfaces(self)} of {self._manager!r}>"


def _commonName(certificate: Any) -> str:
    from cryptography.x509.oid import NameOID

    names = certificate.to_cryptography().subject.get_attributes_for_oid(
        NameOID.COMMON_NAME)
    return str(names[0].value) if names else ""


@implementer(pb.IPBRoot)
class _Root:
    def __init__(self, server: Server) -> None:
        self._server = server

    def rootObject(self, broker: Any) -> RegistryService:
        return self._server._connected(broker)


class Server:
    """
    Publishes C{registry} (an L{aurora.Registry} or the remote registry of an
    L{aurora.Client}) to PB clients.

    @param callTimeout: deadline in seconds for calls this side makes through
        references that clients send it (None: none).
    @param referenceLimit: references (managers, models) one connection may
        hold at once; PB's fixed 1,024 by default.
    @param maxReferenceLimit: the most a client may ask for at connect (a
        relay funnels its clients' references into one connection).
    @param maxLag: seconds a client may stay behind on model updates before
        it is disconnected; C{maxPending}: model fields waiting for it.
    @param maxMessageBytes: the largest message a client may send (at most,
        and by default, L{_wire.MAX_MESSAGE_BYTES}); a larger one closes its
        connection.
    @param maxDepth: the deepest nesting of a message (at most, and by
        default, L{_wire.MAX_DEPTH}); a deeper call is answered with
        L{aurora.errors.LimitExceeded}.
    @param portal: a C{twisted.cred} portal deciding who may log in and
        which interfaces each identity may use (see L{aurora.auth.portal});
        None: everyone, anonymously, may use everything.
    @param allowInsecureLogin: accept passwords on connections without TLS
        (local development only).
    @param maxConnections: connections served at once; more are closed.
    @param loginTimeout: seconds a connection may take to log in.
    @param reactor: the reactor that listens (default: the global one).
    @param clock: what times deadlines and timeouts (default: C{reactor}).
    """

    log = Logger()

    def __init__(self, registry: Any, portal: Any = None, *,
                 allowInsecureLogin: bool = False,
                 maxConnections: int = 1000, loginTimeout: float = 30.0,
                 callTimeout: float | None = 30.0,
                 referenceLimit: int = 1024, maxReferenceLimit: int = 100_000,
                 maxLag: float = 30.0, maxPending: int = 10_000,
                 maxMessageBytes: int = _wire.MAX_MESSAGE_BYTES,
                 maxDepth: int = _wire.MAX_DEPTH,
                 reactor: Any = None, clock: Any = None) -> None:
        if not IRegistry.providedBy(registry):
            raise TypeError(
                f"Server needs an aurora Registry or remote Registry, not {registry!r}"
            )
        if reactor is None:
            from twisted.internet import reactor
        self._registry = registry
        self._reactor = reactor
        self._portal = portal
        self._allowInsecureLogin = allowInsecureLogin
        self._maxConnections = maxConnections
        self._loginTimeout = loginTimeout
        self.factory = _wire.ServerFactory(
            _Root(self), wrap, callTimeout=callTimeout,
            clock=clock if clock is not None else reactor,
            flowLimits={"maxLag": maxLag, "maxPending": maxPending},
            # Configurable downward only: the defaults bound memory and recursion.
            wireLimits={"maxMessageBytes": min(maxMessageBytes, _wire.MAX_MESSAGE_BYTES),
                        "maxDepth": min(maxDepth, _wire.MAX_DEPTH)},
        )
        self._referenceLimit = referenceLimit
        self._maxReferenceLimit = maxReferenceLimit
        self.factory.admit = lambda: len(self._brokers) < self._maxConnections
        self._ports: list[IListeningPort] = []
        self._brokers: set[Any] = set()

    def listen(self, endpoint: str | IStreamServerEndpoint) -> defer.Deferred:
        """
        Listen on C{endpoint}: a server endpoint string (C{"tcp:8789"},
        C{"tcp:0:interface=127.0.0.1"}) or an endpoint object.  A Deferred
        firing with the listening port.
        """
        if isinstance(endpoint, str):
            endpoint = serverFromString(self._reactor, endpoint)

        def listening(port: IListeningPort) -> IListeningPort:
            self._ports.append(port)
            address = port.getHost()
            self.log.info("aurora serving {registry!r} on {address}",
                          registry=self._registry, address=address,
                          port=getattr(address, "port", None))
            return port

        return endpoint.listen(self.factory).addCallback(listening)

    def _connected(self, broker: Any) -> RegistryService:
        # Called from buildProtocol: there is no transport yet.
        self._brokers.add(broker)
        timer = self.factory.clock.callLater(
            self._loginTimeout, lambda: broker.transport.abortConnection())
        broker.loginTimer = timer

        def gone() -> None:
            self._brokers.discard(broker)
            if timer.active():
                timer.cancel()
            self.log.info("client {peer} disconnected", peer=broker.transport.getPeer())

        broker.notifyOnDisconnect(gone)
        broker.referenceLimit = self._referenceLimit
        return RegistryService(self, broker)

    def _loggedIn(self, broker: Any) -> None:
        if broker.loginTimer.active():
            broker.loginTimer.cancel()

    async def _authenticate(self, broker: Any, username: Any, password: Any) -> Identity:
        """The identity for these credentials, or L{LoginFailed}."""
        if self._portal is None:
            return ANONYMOUS_ALL
        transport = broker.transport
        encrypted = ISSLTransport.providedBy(transport)
        if username is not None:
            if not encrypted and not self._allowInsecureLogin:
                raise LoginFailed(
                    "password login needs an encrypted connection and this one is "
                    "plain TCP: serve on ssl: or mtls: and connect with tls:, or "
                    "pass Server(allowInsecureLogin=True) for local development")
            if isinstance(username, str):
                username = username.encode("utf-8")
            if isinstance(password, str):
                password = password.encode("utf-8")
            if not isinstance(username, bytes) or not isinstance(password, bytes):
                raise LoginFailed("username and password must be bytes or str")
            creds: Any = credentials.UsernamePassword(username, password)
            who = f"user {username.decode('utf-8', 'replace')!r}"
        else:
            certificate = transport.getPeerCertificate() if encrypted else None
            if certificate is not None:
                creds = PeerCertificate(_commonName(certificate))
                who = f"certificate {creds.commonName!r}"
            else:
                creds, who = credentials.Anonymous(), "anonymous access"
        try:
            _, identity, _ = await self._portal.login(creds, None, IIdentity)
        except (credError.UnauthorizedLogin, credError.UnhandledCredentials):
            self.log.warn("login refused for {who} from {peer}", who=who,
                          peer=transport.getPeer())
            if isinstance(creds, credentials.Anonymous):
                raise LoginFailed("this server does not allow anonymous access: "
                                  "log in with credentials") from None
            # The same words for an unknown user and a wrong password.
            raise LoginFailed(f"login refused for {who}: unknown, or the wrong "
                              "password") from None
        return identity

    def stop(self, grace: float = 5.0) -> defer.Deferred:
        """
        Stop listening, then close every connection; fires when all are
        closed.  A connection whose peer does not read what is still queued
        for it is aborted after C{grace} seconds.
        """
        ports, self._ports = self._ports, []
        stopped = [defer.maybeDeferred(port.stopListening) for port in ports]
        for broker in list(self._brokers):
            done: defer.Deferred = defer.Deferred()
            abort = self.factory.clock.callLater(grace, broker.transport.abortConnection)

            def closed(d: defer.Deferred = done, abort: Any = abort) -> None:
                if abort.active():
                    abort.cancel()
                d.callback(None)

            broker.notifyOnDisconnect(closed)
            broker.close()
            stopped.append(done)
        return defer.gatherResults(stopped, consumeErrors=True).addCallback(
            lambda _: None
        )
