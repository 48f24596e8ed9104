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
from zope.interface import implementer

from aurora import _schema, _types, _wire
from aurora.interfaces import IRegistry, IRegistryService
from aurora.remote import wrap
from aurora.remoteable import Manager


@implementer(IRegistryService)
class RegistryService(Manager):
    """One connection's view of the published registry (its PB root)."""

    log = Logger()

    def __init__(self, registry: Any, broker: Any, maxReferenceLimit: int) -> None:
        self._registry = registry
        self._broker = broker
        self._maxReferenceLimit = maxReferenceLimit

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
            self._broker.referenceLimit = min(wanted, self._maxReferenceLimit)
        return dict(_wire.versionInfo(), referenceLimit=self._broker.referenceLimit)

    def ping(self) -> None:
        return None

    def getManager(self, name: Any) -> defer.Deferred:
        return self._registry.getManager(_schema.interfaceName(name))

    def interfaces(self) -> defer.Deferred:
        return self._registry.interfaces()

    def types(self) -> Any:
        # A relay's registry waits until it has learned its upstream's types.
        learned = getattr(self._registry, "types", None)
        return learned() if learned is not None else _types.advertised()


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
    @param reactor: the reactor that listens (default: the global one).
    @param clock: what times those calls' deadlines (default: C{reactor}).
    """

    log = Logger()

    def __init__(self, registry: Any, *, callTimeout: float | None = 30.0,
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

        def gone() -> None:
            self._brokers.discard(broker)
            self.log.info("client {peer} disconnected", peer=broker.transport.getPeer())

        broker.notifyOnDisconnect(gone)
        broker.referenceLimit = self._referenceLimit
        return RegistryService(self._registry, broker, self._maxReferenceLimit)

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
