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
from twisted.cred import credentials
from twisted.internet.interfaces import ISSLTransport
from zope.interface import implementer

from typing import Mapping

from aurora import _handshake, _schema, _types
from aurora._broker import ServerFactory
from aurora._cork import Cork
from aurora._limits import MAX_DEPTH, MAX_MESSAGE_BYTES, MIB, DecodingPool, Limits
from aurora._manager import Manager
from aurora._seams import IAccess
from aurora._wrapper import wrap
from aurora.auth import ANONYMOUS_ALL, Authenticator, Identity, PeerCertificate
from aurora.errors import Error, LimitExceeded, LoginFailed, UnknownInterface, _safeRepr, _safeText
from aurora.interfaces import IRegistry, IRegistryService, IRegistryView
from aurora.registry import Registry as LocalRegistry


@implementer(IAccess)
class _Session:
    """
    One connection as the server knows it: who logged in on it, and so what
    its peer may use (its broker asks L{mayUse}); whether it said hello; why
    it may not stay, if it may not.  Made by the server's factory for each
    connection it accepts, before anything arrives on it.
    """

    def __init__(self, server: Server) -> None:
        self._server = server
        self.identity: Identity | None = None
        self.helloSaid = False
        self.refused: Error | None = None  # over a connection limit: told, then closed
        self.loginTimer: Any = None  # closes it unless it logs in in time

    def mayUse(self, interfaceName: str) -> bool:
        return self._server._mayUse(self.identity, interfaceName)


@implementer(IRegistryService)
class RegistryService(Manager):
    """One connection's gate to the published registry (its PB root)."""

    log = Logger()

    def __init__(self, server: Server, broker: Any, session: _Session) -> None:
        self._server = server
        self._registry = server._registry
        self._broker = broker
        self._session = session

    def hello(self, peer: Any) -> dict[str, Any]:
        session = self._session
        if session.refused is not None:
            # Answered, then closed: the client learns why it cannot stay.
            self._server.factory.clock.callLater(0, self._broker.close)
            raise session.refused
        if session.helloSaid:
            raise Error("hello was already exchanged on this connection")
        _handshake.checkVersion(peer, "client")
        session.helloSaid = True
        self.log.info("client {peer} connected (aurora {version})",
                      peer=self._broker.peer, version=_safeText(peer.get("aurora"), 40))
        timeout = peer.get("timeout")
        if isinstance(timeout, (int, float)) and timeout > 0:
            # The client pings more often than this; silence means it is gone
            # (a partition, a dead host), and with it its observers.
            self._broker.watchIdle(self._server._idleTimeout, float(timeout))
        # (A referenceLimit the peer asks for here is ignored: limits are
        # raised at login, for an identity; see Server(grants=...).)
        return dict(_handshake.versionInfo(), referenceLimit=self._broker.referenceLimit)

    def ping(self) -> None:
        return None

    async def login(self, username: Any, password: Any) -> RegistryView:
        session = self._session
        if session.refused is not None:
            self._server.factory.clock.callLater(0, self._broker.close)
            raise session.refused
        identity = await self._server._authenticate(self._broker, username, password)
        before = session.identity
        session.identity = identity
        self._server._loggedIn(self._broker, session, identity)
        if before != identity:  # a peer that logs in again and again: one line
            self.log.info("{peer} logged in as {who}", peer=self._broker.peer,
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
        try:
            if not self._allowed(name):
                raise UnknownInterface(name)
            manager = await self._registry.getManager(name)
        except UnknownInterface:
            # Exactly what an interface that does not exist gets; what this
            # identity may use is no secret to it.  Listed only when known at
            # once (a local registry): a relay would have to ask its upstream,
            # which may be silent or gone, and the answer is "no" either way.
            listing = ""
            if isinstance(self._registry, LocalRegistry):
                listing = f"; {_offering(await self.interfaces())}"
            raise UnknownInterface(
                f"no manager is registered under {_safeText(name, 200)}{listing}",
                interface=name) from None
        iface = _schema.findInterface(manager, name)
        if iface is None:
            return manager
        key = (id(manager), name)
        facet = self._facets.get(key)
        if facet is None or facet._manager is not manager or facet._offered()[0] is not iface:
            facet = self._facets[key] = Facet(manager, iface)
        return facet

    async def interfaces(self) -> list[str]:
        return [n for n in await self._registry.interfaces() if self._allowed(n)]


_MAX_NAMED = 20  # interfaces an UnknownInterface lists, at most


def _offering(names: list[str]) -> str:
    if not names:
        return "none is offered to you"
    shown = ", ".join(names[:_MAX_NAMED])
    more = f" and {len(names) - _MAX_NAMED} more" if len(names) > _MAX_NAMED else ""
    return f"offered: {shown}{more}"


class Facet(Manager):
    """
    A manager as obtained under one interface: only that interface's
    methods are exposed, whatever else the manager implements.
    """

    def __init__(self, manager: Any, iface: Any) -> None:
        self._manager = manager
        _schema.provide(self, iface)

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

    Every limit below bounds what one peer can make the server spend; the
    README's Threat model lists them with the attack each stops.  Before a
    connection has logged in it has far smaller budgets
    (L{aurora._limits.Limits.beforeLogin}: 16 KiB and 1,000 items per
    message, 16 references); a message over them closes it.

    @param callTimeout: deadline in seconds for calls this side makes through
        references that clients send it (None: none).
    @param referenceLimit: references and model subscriptions one connection
        may hold at once (each way); PB's 1,024 by default.
    @param maxReferenceLimit: the most a grant may raise C{referenceLimit}
        to.
    @param grants: raised limits per identity, granted at login:
        C{{"relay-eu": {"referenceLimit": 100_000}}}; the key C{None} is
        anonymous access.  Limit names as the parameters here
        (C{referenceLimit}, C{maxMessageBytes}, C{maxMessageItems},
        C{maxPendingCalls}, C{maxOutboundBytes}).  A relay funnels its
        clients' references into one connection: grant it more.
    @param maxLag: seconds a client may stay behind (not reading) before it
        is disconnected; C{maxPending}: model fields waiting for it.
    @param maxMessageBytes: the largest message a client may send (at most,
        and by default, L{aurora._limits.MAX_MESSAGE_BYTES}); a larger one
        closes its connection.
    @param maxMessageItems: the most items one message may hold (2,000,000
        by default: a list of 100,000 small records), charged as list
        headers arrive; a call over it is answered with
        L{aurora.errors.LimitExceeded} without being built.
    @param maxDepth: the deepest nesting of a message (at most, and by
        default, L{aurora._limits.MAX_DEPTH}); a deeper call is answered
        with L{aurora.errors.LimitExceeded}.
    @param maxDecodingBytes: bytes of messages in progress on all
        connections at once (64 MiB); C{maxDecodingItems} (4,000,000), their
        items.  A message that would take the total past either is refused.
    @param maxPendingCalls: calls in progress on one connection (1,000); at
        that many the server stops reading it until one completes.
    @param maxOutboundBytes: bytes waiting to be sent to one peer that does
        not read (16 MiB); past it the server stops reading the peer's
        requests, and drops the peer after C{maxLag}.
    @param idleTimeout: seconds of silence after which the server probes a
        connection (60); one that leaves the probe unanswered for half as
        long again is dropped, and so is one that takes longer than this to
        send one message.  Every connection, logged in or not.
    @param errorDetail: what a remote caller learns of an exception that is
        not an L{aurora.errors.Error}: C{"type"} (its type and an error id
        that is in the server's log line) or C{"message"} (its message too;
        for development).
    @param logInterval: what peers cause (bad input, refusals, failed
        logins) and each kind of application exception are logged at most
        once per this many seconds; the next line says how many were left
        out ("and 41 more like it").
    @param portal: a C{twisted.cred} portal deciding who may log in and
        which interfaces each identity may use (see L{aurora.auth.portal});
        None: everyone, anonymously, may use everything.
    @param allowInsecureLogin: accept passwords on connections without TLS
        (local development only).
    @param loginThreads: threads that hash passwords (2), off the reactor
        thread, in a pool of this server's own (see
        L{aurora.auth.Authenticator}, the attribute C{authenticator});
        C{maxWaitingLogins} (64) attempts may wait for one, and one more is
        refused at once with L{LimitExceeded} (the server is busy; a Client
        retries it with backoff).  Each
        attempt costs exactly one hash, whoever the user.
    @param loginDelay: how long the answer to a failed login is held back
        (0.25 s, 0: not at all), doubling with each recent failure on the
        connection or from the address, up to C{maxLoginDelay} (2 s); an
        address's failures are forgotten one every 10 s.  Never a lockout.
    @param maxConnections: connections served at once (1,000);
        C{maxConnectionsPerAddress} (100), from one IP address.  A client
        over either is told the server is at its connection limit.
    @param loginTimeout: seconds a connection may take to log in.
    @param reactor: the reactor that listens (default: the global one).
    @param clock: what times deadlines and timeouts (default: C{reactor}).
    """

    log = Logger()

    def __init__(self, registry: Any, portal: Any = None, *,
                 allowInsecureLogin: bool = False,
                 loginThreads: int = 2, maxWaitingLogins: int = 64,
                 loginDelay: float = 0.25, maxLoginDelay: float = 2.0,
                 maxConnections: int = 1000, loginTimeout: float = 30.0,
                 callTimeout: float | None = 30.0,
                 referenceLimit: int = 1024, maxReferenceLimit: int = 100_000,
                 grants: Mapping[str | None, Mapping[str, int]] | None = None,
                 maxLag: float = 30.0, maxPending: int = 10_000,
                 maxMessageBytes: int = MAX_MESSAGE_BYTES,
                 maxMessageItems: int = Limits.maxMessageItems,
                 maxDepth: int = MAX_DEPTH,
                 maxDecodingBytes: int = 64 * MIB,
                 maxDecodingItems: int = 4_000_000,
                 maxPendingCalls: int = Limits.maxPendingCalls,
                 maxOutboundBytes: int = Limits.maxOutboundBytes,
                 maxConnectionsPerAddress: int = 100,
                 idleTimeout: float = 60.0,
                 errorDetail: str = "type", logInterval: float = 60.0,
                 reactor: Any = None, clock: Any = None) -> None:
        if not IRegistry.providedBy(registry):
            raise TypeError(
                f"Server needs an aurora Registry or remote Registry, not {_safeRepr(registry)}"
            )
        if reactor is None:
            from twisted.internet import reactor
        self._registry = registry
        # A client's registry served again (a relay, the bare way): it must
        # pass its upstream's types on without this process importing them.
        relay = getattr(registry, "relay", None)
        types = relay() if callable(relay) else None
        self._reactor = reactor
        self._portal = portal
        self._allowInsecureLogin = allowInsecureLogin
        self.authenticator = Authenticator(
            portal, reactor=reactor, clock=clock if clock is not None else reactor,
            threads=loginThreads, maxWaiting=maxWaitingLogins,
            firstDelay=loginDelay, maxDelay=maxLoginDelay, logInterval=logInterval)
        self._maxConnections = maxConnections
        self._maxPerAddress = maxConnectionsPerAddress
        self._loginTimeout = loginTimeout
        self._idleTimeout = idleTimeout
        if errorDetail not in ("type", "message"):
            raise ValueError(f"errorDetail must be 'type' or 'message', not {errorDetail!r}")
        limits = Limits(
            # Configurable downward only: the defaults bound memory and recursion.
            maxMessageBytes=min(maxMessageBytes, MAX_MESSAGE_BYTES),
            maxMessageItems=maxMessageItems,
            maxDepth=min(maxDepth, MAX_DEPTH),
            referenceLimit=referenceLimit,
            maxPendingCalls=maxPendingCalls,
            maxOutboundBytes=maxOutboundBytes)
        before = Limits.beforeLogin()
        loginLimits = Limits(**{
            name: min(getattr(before, name), getattr(limits, name))
            for name in ("maxMessageBytes", "maxMessageItems", "maxDepth",
                         "referenceLimit", "maxPendingCalls", "maxOutboundBytes")})
        # What no grant goes past: maxReferenceLimit, and the nesting that
        # unjelly's recursion allows.
        self._grantCap = Limits(
            maxMessageBytes=16 * MAX_MESSAGE_BYTES, maxMessageItems=2**31,
            maxDepth=MAX_DEPTH, referenceLimit=maxReferenceLimit,
            maxPendingCalls=2**31, maxOutboundBytes=2**40)
        self._grants = dict(grants or {})
        for grant in self._grants.values():
            limits.granted(grant)  # a bad name or value fails here, not at login
        self.factory = ServerFactory(
            _Root(self), wrap, callTimeout=callTimeout,
            clock=clock if clock is not None else reactor,
            flowLimits={"maxLag": maxLag, "maxPending": maxPending},
            limits=limits, loginLimits=loginLimits,
            pool=DecodingPool(maxDecodingBytes, maxDecodingItems),
            errorDetail=errorDetail, access=lambda: _Session(self),
            cork=Cork.forReactor(reactor), types=types)
        self.factory.idleTimeout = idleTimeout
        self.factory.peerLog.interval = self.factory.errorLog.interval = logInterval
        self.factory.admit = self._admit
        self._ports: list[IListeningPort] = []
        self._brokers: set[Any] = set()
        self._perAddress: dict[str, int] = {}
        self._refusing = 0  # connections being told the server is full

    def listen(self, endpoint: str | IStreamServerEndpoint) -> defer.Deferred:
        """
        Listen on C{endpoint}: a server endpoint string (C{"tcp:8789"},
        C{"tcp:0:interface=127.0.0.1"}) or an endpoint object.  A Deferred
        firing with the listening port.
        """
        where = serverFromString(self._reactor, endpoint) \
            if isinstance(endpoint, str) else endpoint

        def listening(port: IListeningPort) -> IListeningPort:
            self._ports.append(port)
            address = port.getHost()
            self.log.info("aurora serving {registry!r} on {address}",
                          registry=self._registry, address=address,
                          port=getattr(address, "port", None))
            return port

        return where.listen(self.factory).addCallback(listening)

    def _admit(self, addr: Any) -> bool:
        """
        Whether a connection from C{addr} is served.  One over a limit is
        accepted only to be told why it cannot stay (at most a tenth of
        C{maxConnections} at once; past that, closed at once).
        """
        host = getattr(addr, "host", str(addr))
        full = len(self._brokers) - self._refusing >= self._maxConnections
        crowded = self._perAddress.get(host, 0) >= self._maxPerAddress
        self._pendingRefusal = None
        if full or crowded:
            what = (f"{self._maxConnections} connections, its maxConnections" if full
                    else f"{self._maxPerAddress} connections from {host}, its "
                    "maxConnectionsPerAddress")
            self.factory.peerLog.warn(
                ("connection limit", full), "refused a connection from {peer}: the "
                "server is at its connection limit ({what})", peer=host, what=what)
            if self._refusing >= max(10, self._maxConnections // 10):
                return False
            self._pendingRefusal = LimitExceeded(
                f"the server is at its connection limit ({what}); try again later",
                limit=self._maxConnections if full else self._maxPerAddress)
            return True
        self._perAddress[host] = self._perAddress.get(host, 0) + 1
        self._pendingHost = host
        return True

    def _connected(self, broker: Any) -> RegistryService:
        # Called from buildProtocol, after _admit: there is no transport yet.
        refusal, self._pendingRefusal = self._pendingRefusal, None
        self._brokers.add(broker)
        session: _Session = broker.access
        clock = self.factory.clock
        if refusal is not None:
            self._refusing += 1
            session.refused = refusal
            timer = clock.callLater(5.0, lambda: broker.transport.abortConnection())
            host = None
        else:
            timer = clock.callLater(
                self._loginTimeout, lambda: broker.transport.abortConnection())
            host = self._pendingHost
        session.loginTimer = timer

        def gone() -> None:
            self._brokers.discard(broker)
            if timer.active():
                timer.cancel()
            if refusal is not None:
                self._refusing -= 1
                return
            if host is None:
                return
            left = self._perAddress.get(host, 1) - 1
            if left:
                self._perAddress[host] = left
            else:
                self._perAddress.pop(host, None)
            self.log.info("client {peer} disconnected", peer=broker.peer)

        broker.notifyOnDisconnect(gone)
        return RegistryService(self, broker, session)

    def _mayUse(self, identity: Identity | None, name: str) -> bool:
        """
        Whether a peer logged in as C{identity} may use C{name}: its identity
        allows it and the registry offers it (a relay's allow-list), for a
        manager however it got there (by name, or returned by another's
        method).
        """
        if identity is None:
            return False  # not logged in: only aurora's own interfaces
        if identity.interfaces is not None and name not in identity.interfaces:
            return False
        offers = getattr(self._registry, "offers", None)
        return offers is None or offers(name)

    def _loggedIn(self, broker: Any, session: _Session, identity: Identity) -> None:
        if session.loginTimer.active():
            session.loginTimer.cancel()
        grant = self._grants.get(identity.name)
        broker.setLimits(self.factory.loggedInLimits.granted(grant, self._grantCap))

    async def _authenticate(self, broker: Any, username: Any, password: Any) -> Identity:
        """
        The identity for these credentials, or L{LoginFailed}: checked by
        C{self.authenticator} (hashing in its pool, failures slowed down).
        """
        if self._portal is None:
            return ANONYMOUS_ALL
        transport = broker.transport
        encrypted = ISSLTransport.providedBy(transport)
        if username is not None:
            if not encrypted and not self._allowInsecureLogin:
                raise LoginFailed(
                    "password login needs an encrypted connection and this one is "
                    "plain TCP: serve on ssl: or mtls: and connect with tls:, or "
                    "pass Server(allowInsecureLogin=True) (twistd --insecure-login) "
                    "for local development")
            if isinstance(username, str):
                username = username.encode("utf-8")
            if isinstance(password, str):
                password = password.encode("utf-8")
            if not isinstance(username, bytes) or not isinstance(password, bytes):
                raise LoginFailed("username and password must be bytes or str")
            creds: Any = credentials.UsernamePassword(username, password)
        else:
            certificate = transport.getPeerCertificate() if encrypted else None
            if certificate is not None:
                creds = PeerCertificate(_commonName(certificate))
            else:
                creds = credentials.Anonymous()
        peer = transport.getPeer()
        host = getattr(peer, "host", None) or str(peer)
        return await self.authenticator.login(
            creds, connection=broker, address=host,
            peer=f"{host}:{peer.port}" if hasattr(peer, "port") else host)

    def stop(self, grace: float = 5.0) -> defer.Deferred:
        """
        Stop listening, then close every connection; fires when all are
        closed.  A connection whose peer does not read what is still queued
        for it is aborted after C{grace} seconds.
        """
        self.authenticator.stop()  # its hashing pool; held answers go now
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
