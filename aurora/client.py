"""
The client: connects to a Server and hands out its remote registry.
"""

from __future__ import annotations

from typing import Any

from twisted.application.internet import ClientService, backoffPolicy
from twisted.internet import defer
from twisted.internet.endpoints import clientFromString
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from aurora import _wire
from aurora.errors import ConnectionFailed, IncompatibleVersion
from aurora.interfaces import IRegistryService
from aurora.remote import Registry, Wrapper, wrap


@implementer(IStreamClientEndpoint)
class _RecordingEndpoint:
    """Remembers why the last attempt failed, for L{ConnectionFailed}."""

    def __init__(self, endpoint: IStreamClientEndpoint) -> None:
        self._endpoint = endpoint
        self.lastFailure: Failure | None = None

    def connect(self, factory: Any) -> defer.Deferred:
        def failed(f: Failure) -> Failure:
            self.lastFailure = f
            return f

        return self._endpoint.connect(factory).addErrback(failed)


class Client:
    """
    A connection to an aurora L{Server}.

    @param endpoint: a client endpoint string (C{"tcp:127.0.0.1:8789"}) or
        an endpoint object.
    @param connectTimeout: seconds L{getRegistry} waits for a first
        connection before failing with L{ConnectionFailed} (None: forever).
    @param callTimeout: default deadline in seconds of every remote call
        (None: none); expiry raises L{aurora.errors.Timeout}.
    @param reactor: the reactor that connects (default: the global one).
    @param clock: what times deadlines and retries (default: C{reactor}).
    """

    log = Logger()

    def __init__(self, endpoint: str | IStreamClientEndpoint, *,
                 connectTimeout: float | None = 30.0,
                 callTimeout: float | None = 30.0,
                 reactor: Any = None, clock: Any = None) -> None:
        if reactor is None:
            from twisted.internet import reactor
        self._clock = clock if clock is not None else reactor
        self._description = endpoint if isinstance(endpoint, str) else repr(endpoint)
        if isinstance(endpoint, str):
            endpoint = clientFromString(reactor, endpoint)
        self._endpoint = _RecordingEndpoint(endpoint)
        self._connectTimeout = connectTimeout
        self.factory = _wire.ClientFactory(wrapReference=wrap)
        self.factory.callTimeout = callTimeout
        self.factory.clock = self._clock
        self._service = ClientService(
            self._endpoint, self.factory,
            retryPolicy=backoffPolicy(initialDelay=0.5, maxDelay=30.0),
            clock=self._clock, prepareConnection=self._prepare,
        )
        self._registry: Registry | None = None
        self._broker: Any = None
        self._waiters: list[defer.Deferred] = []
        self._fatal: Failure | None = None
        self._stopped: defer.Deferred | None = None

    def getRegistry(self) -> defer.Deferred:
        """A Deferred firing with the remote L{aurora.remote.Registry}."""
        if self._fatal is not None:
            return defer.fail(self._fatal)
        if self._registry is not None and self._isConnected():
            return defer.succeed(self._registry)
        if not self._service.running:
            self._service.startService()
        d: defer.Deferred = defer.Deferred()
        self._waiters.append(d)
        if self._connectTimeout is not None:
            d.addTimeout(self._connectTimeout, self._clock,
                         onTimeoutCancel=self._noConnection)
        return d

    def _isConnected(self) -> bool:
        return self._broker is not None and not self._broker.disconnected

    def _noConnection(self, result: Any, seconds: float) -> Failure:
        why = self._endpoint.lastFailure
        reason = f": {why.getErrorMessage()}" if why is not None else ""
        return Failure(ConnectionFailed(
            f"no connection to {self._description} within {seconds} s{reason}",
            endpoint=self._description,
        ))

    def _prepare(self, proto: Any) -> None:
        # ClientService's prepareConnection, used only as "a connection was
        # made": it returns at once, so the service is Connected before the
        # handshake runs.  ClientService cannot take a connection that drops
        # or fails while it is still preparing (NoTransition); once Connected,
        # a drop is an ordinary disconnect and it retries with backoff.
        defer.ensureDeferred(self._handshake(proto))

    async def _handshake(self, proto: Any) -> None:
        try:
            rootRef = await self.factory.getRootObject().addTimeout(
                self._connectTimeout or 30.0, self._clock)
            root = Wrapper(rootRef, (IRegistryService.__identifier__,))
            server = await root.callRemote("hello", _wire.versionInfo())
            _wire.checkVersion(server, "server")
        except IncompatibleVersion:
            self._giveUp(Failure())
            return
        except Exception:
            self.log.failure("handshake with {endpoint} failed; will retry",
                             endpoint=self._description)
            proto.transport.loseConnection()
            return
        self._broker = rootRef.broker
        self._registry = Registry(root)
        self.log.info("connected to {endpoint}", endpoint=self._description)
        waiters, self._waiters = self._waiters, []
        for d in waiters:
            d.callback(self._registry)

    def _giveUp(self, failure: Failure) -> None:
        self._fatal = failure
        self.log.error("giving up on {endpoint}: {why}", endpoint=self._description,
                       why=failure.getErrorMessage())
        waiters, self._waiters = self._waiters, []
        for d in waiters:
            d.errback(failure)
        self.stop()

    def stop(self) -> defer.Deferred:
        """Close the connection and stop reconnecting; fires when closed."""
        waiters, self._waiters = self._waiters, []
        for d in waiters:
            d.cancel()
        if self._stopped is None:
            self._stopped = self._service.stopService() if self._service.running \
                else defer.succeed(None)
        # Every caller gets its own Deferred firing when the one stop is done.
        done: defer.Deferred = defer.Deferred()
        self._stopped.addBoth(lambda r: (done.callback(None), r)[1])
        return done
