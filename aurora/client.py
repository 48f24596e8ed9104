"""
The client: connects to a Server, hands out its remote registry, notices
outages, reconnects by itself and brings back every object it handed out.

The application keeps its objects across an outage: the remote registry, the
wrappers and the model mirrors are the same objects before and after; a
reconnect swaps new references into them (see L{Client} for the order).
"""

from __future__ import annotations

import random
from typing import Any, Callable, Mapping

from twisted.application.internet import backoffPolicy
from twisted.internet import defer
from twisted.internet.endpoints import clientFromString
from twisted.internet.interfaces import ISSLTransport, IStreamClientEndpoint
from twisted.logger import ILogObserver, LogEvent, Logger, globalLogPublisher
from twisted.python.failure import Failure
from zope.interface import implementer, provider

from aurora import _handshake, signals
from aurora._broker import ClientFactory
from aurora._cork import Cork
from aurora._copyable import OpaqueCopy
from aurora._limits import Limits
from aurora._model import OpaqueModel
from aurora._pbcompat import protocolOf, quietClientService
from aurora._resync import Tracker
from aurora._types import TypeTable
from aurora._wrapper import Wrapper, wrap, wrapperTable
from aurora.errors import (
    ConnectionFailed,
    Error,
    IncompatibleVersion,
    LoginFailed,
    OpaqueError,
    _safeText,
)
from aurora.interfaces import IRegistryService, IRegistryView
from aurora.remote import Registry


@implementer(IStreamClientEndpoint)
class _RecordingEndpoint:
    """Tells C{onFailure} why each attempt to connect failed."""

    def __init__(self, endpoint: IStreamClientEndpoint, description: str,
                 onFailure: Callable[[Failure], None]) -> None:
        self._endpoint = endpoint
        self.description = description
        self._onFailure = onFailure

    def __repr__(self) -> str:
        return self.description  # ClientService logs its endpoint: no address

    def connect(self, factory: Any) -> defer.Deferred:
        def failed(f: Failure) -> Failure:
            self._onFailure(f)
            return f

        return self._endpoint.connect(factory).addErrback(failed)


@provider(ILogObserver)
def _withoutRetryLines(event: LogEvent) -> None:
    # ClientService logs "Scheduling retry N to connect ..." before every
    # attempt: an outage of an hour fills the log with them.  Client says
    # why the server cannot be reached once per change instead (_attemptFailed).
    if not str(event.get("log_format", "")).startswith("Scheduling retry"):
        globalLogPublisher(event)


_ClientService = quietClientService(_withoutRetryLines)


_MAX_REASONS = 10


def retryPolicy(initialDelay: float, maxDelay: float) -> Callable[[int], float]:
    """
    Exponential backoff with jitter: the first retry within
    C{2 * initialDelay}, later ones growing by 1.5 up to C{maxDelay} (plus
    jitter), so a long outage never stretches retries into hours.
    """
    policy = backoffPolicy(initialDelay=initialDelay, maxDelay=maxDelay, factor=1.5,
                           jitter=lambda: random.uniform(0, initialDelay))
    # ClientService numbers the first retry 1; backoffPolicy grows from 0.
    return lambda attempt: policy(attempt - 1)


def _whyLost(broker: Any) -> str | None:
    """Why C{broker}'s connection was lost, for the log; None while it is not."""
    reason = broker.lostReason
    return reason.getErrorMessage() if reason is not None else None


class Client:
    """
    A connection to an aurora L{Server}, kept up by itself.

    While connected, the client pings every C{heartbeat} seconds and declares
    the connection dead when nothing at all has arrived for C{timeout}
    seconds (a silent partition), or at once when TCP says so.  It then sends
    L{aurora.signals.disconnected} once, fails every call with
    L{ConnectionLost}, and reconnects with exponential backoff and jitter.

    On reconnect it resyncs, in this order: the registry; every manager
    wrapper the application still holds (fetched again and swapped into the
    same wrapper object); every live model mirror (fetched again by replaying
    the call that produced it, its fields refreshed, C{changed} sent for each
    that differs).  Then it sends L{aurora.signals.connected} (C{sender=}
    the client, C{registry=} the remote registry): the hook for whatever the
    application itself set up on the server.

    @param endpoint: a client endpoint string (C{"tcp:127.0.0.1:8789"}) or
        an endpoint object.
    @param credentials: C{twisted.cred.credentials.UsernamePassword(b"alice",
        b"secret")} to log in (again at every reconnect); None for anonymous
        access or the client certificate of a mutual-TLS endpoint.  A refusal
        fails L{getRegistry} with L{LoginFailed}.
    @param connectTimeout: seconds L{getRegistry} waits for a first
        connection before failing with L{ConnectionFailed} (None: forever).
    @param callTimeout: default deadline in seconds of every remote call
        (None: none); expiry raises L{aurora.errors.Timeout}.
    @param heartbeat: seconds between pings (None: no heartbeat, no timeout).
    @param timeout: seconds of silence after which the connection is dead
        (default: 1.75 times C{heartbeat}, so that a silent partition is
        noticed within twice the heartbeat, timer delays included; a pong
        may be up to three quarters of a heartbeat late before that is
        mistaken for one).  The server is told, and drops this
        client after the same silence.
    @param reconnectDelay: the backoff's initial delay; the first retry comes
        within twice this.
    @param maxReconnectDelay: the longest wait between two attempts.
    @param referenceLimit: ask the server to let this connection hold up to
        this many references (a relay asks for many).
    @param allowInsecureLogin: send C{credentials} on a connection without
        TLS (local development only).  Without it, a password is never sent
        in the clear: L{getRegistry} fails at once with L{LoginFailed}.
    @param opaque: accept, as opaque objects that are passed on unchanged,
        the Copyable, Model and Error types the server advertises but this
        process has not imported (what a relay does).  They are this
        client's (its L{typeTable}): no other client or server of the
        process accepts them.
    @param wrappers: wrapper classes for this client only, by interface:
        C{{IUserManager: UserWrapper}}; they come before the process's
        (L{aurora.remote.registerWrapper}).
    @param reactor: the reactor that connects (default: the global one).
    @param clock: what times heartbeats, deadlines and retries (default:
        C{reactor}).
    """

    log = Logger()

    def __init__(self, endpoint: str | IStreamClientEndpoint,
                 credentials: Any = None, *,
                 connectTimeout: float | None = 30.0,
                 callTimeout: float | None = 30.0,
                 heartbeat: float | None = 5.0,
                 timeout: float | None = None,
                 reconnectDelay: float = 0.25,
                 maxReconnectDelay: float = 30.0,
                 referenceLimit: int | None = None, opaque: bool = False,
                 allowInsecureLogin: bool = False,
                 wrappers: Mapping[Any, type[Wrapper]] | None = None,
                 reactor: Any = None, clock: Any = None) -> None:
        if reactor is None:
            from twisted.internet import reactor
        self._clock = clock if clock is not None else reactor
        self._description = endpoint if isinstance(endpoint, str) else repr(endpoint)
        self._endpoint = _RecordingEndpoint(
            clientFromString(reactor, endpoint) if isinstance(endpoint, str) else endpoint,
            self._description, self._connectFailed)
        self._connectTimeout = connectTimeout
        self._heartbeat = heartbeat
        self._timeout = timeout if timeout is not None else (
            1.75 * heartbeat if heartbeat else None)
        self._referenceLimit = referenceLimit
        self._opaque = opaque
        self._tracker = Tracker()
        self.typeTable = TypeTable()
        """The types this client accepts beyond the declared ones (see C{opaque})."""
        self.factory = ClientFactory(
            wrap, callTimeout=callTimeout, clock=self._clock, tracker=self._tracker,
            limits=Limits(referenceLimit=referenceLimit or Limits.referenceLimit),
            cork=Cork.forReactor(reactor), types=self.typeTable,
            wrappers=wrapperTable(wrappers))
        self.factory.noisy = False  # not "Starting factory" at every attempt
        self._policy = retryPolicy(reconnectDelay, maxReconnectDelay)
        self._service = _ClientService(
            self._endpoint, self.factory,
            retryPolicy=self._retryDelay,
            clock=self._clock, prepareConnection=self._prepare,
        )
        # The objects the application holds: the same for the client's life.
        self._credentials = credentials
        self._allowInsecureLogin = allowInsecureLogin
        self._root = Wrapper(None, (IRegistryService.__identifier__,), self.factory)
        self._view = Wrapper(None, (IRegistryView.__identifier__,), self.factory)
        self._registry = Registry(self._view, source=self)
        self._up = False
        self.everConnected = False
        self._broker: Any = None
        self._waiters: list[defer.Deferred] = []
        self._fatal: Failure | None = None
        self._stopped: defer.Deferred | None = None
        # Why the server cannot be reached: said once per change (see
        # _attemptFailed), kept for the errors that name it.
        self._problem: str | None = None  # why the last attempt failed
        self._stage: str | None = None  # where the attempt under way stands
        self._failedAttempts = 0  # since the connection was last up
        self._failureWaiters: list[defer.Deferred] = []
        self._said: set[str] = set()  # the problems logged since it was last up

    @property
    def connected(self) -> bool:
        """Whether the connection is up and resynced."""
        return self._up

    @property
    def registry(self) -> Registry:
        """
        The remote registry, the same object for the client's life; usable
        before the first connection: its C{getManager} and C{interfaces} wait
        while the very first attempt to connect is in progress (within
        C{callTimeout}), and fail with L{ConnectionLost} naming why once an
        attempt has failed.
        """
        return self._registry

    def start(self) -> None:
        """Start connecting (L{getRegistry} does this too) without waiting."""
        if not self._service.running and self._stopped is None:
            self._service.startService()

    def getRegistry(self) -> defer.Deferred:
        """
        A Deferred firing with the remote L{aurora.remote.Registry} once
        connected, or failing with L{ConnectionFailed} after
        C{connectTimeout} (or L{IncompatibleVersion}).
        """
        if self._fatal is not None:
            return defer.fail(self._fatal)
        self.start()
        d = self.whenConnected()
        if not d.called and self._connectTimeout is not None:
            d.addTimeout(self._connectTimeout, self._clock,
                         onTimeoutCancel=self._noConnection)
        return d

    def whenConnected(self) -> defer.Deferred:
        """A Deferred firing with the registry when the connection is (next) up."""
        if self._fatal is not None:
            return defer.fail(self._fatal)
        if self._up:
            return defer.succeed(self._registry)
        d: defer.Deferred = defer.Deferred()
        self._waiters.append(d)
        return d

    def _noConnection(self, result: Any, seconds: float) -> Failure:
        # A failed attempt's cause says more than where a new one stands.
        why = self._problem or self._stage
        reason = f": {why}" if why is not None else ""
        return Failure(ConnectionFailed(
            f"no connection to {self._description} within {seconds} s{reason}",
            endpoint=self._description,
        ))

    def _retryDelay(self, attempt: int) -> float:
        # ClientService counts attempts since the last TCP connection; a
        # server that accepts and then closes (at its connection limit, or
        # not aurora) would be retried at the first delay forever.  Attempts
        # count until the aurora handshake succeeds.
        return self._policy(max(attempt, self._failedAttempts))

    def _prepare(self, proto: Any) -> None:
        # ClientService's prepareConnection, used only as "a connection was
        # made": it returns at once, so the service is Connected before the
        # handshake runs.  ClientService cannot take a connection that drops
        # or fails while it is still preparing (NoTransition); once Connected,
        # a drop is an ordinary disconnect and it retries with backoff.
        defer.ensureDeferred(self._connect(protocolOf(proto)))

    async def _connect(self, broker: Any) -> None:
        self._broker = broker
        broker.notifyOnDisconnect(self._lost)
        if self._timeout:
            broker.watch(self._timeout, self._heartbeat, self._ping)
        # What to say if the deadline passes while the server stays silent:
        # a PB server speaks first, a TLS server waits for its client to.
        self._stage = (
            "connected, but the server has not begun PB's handshake (a TLS port "
            "reached with plain TCP? connect with tls:)")
        try:
            rootRef = await broker.whenReady().addTimeout(
                self._timeoutFor() or 30.0, self._clock)
            self._stage = "connected, but the aurora handshake did not finish"
            self._root._rebind(Wrapper(rootRef, (), self.factory))
            peer = dict(_handshake.versionInfo(), timeout=self._timeout,
                        referenceLimit=self._referenceLimit)
            server = await self._root._call("hello", (peer,), {}, self._timeoutFor())
            _handshake.checkVersion(server, "server")
            creds = self._credentials
            if creds is not None and not self._allowInsecureLogin and \
                    not ISSLTransport.providedBy(broker.transport):
                # Refused here: the server would refuse it too, but only
                # after the password had crossed the wire in the clear.
                raise LoginFailed(
                    f"not sending the password to {self._description}: the "
                    "connection is not TLS; connect with tls: (e.g. "
                    "tls:HOST:PORT:trustRoots=DIR) or pass "
                    "allowInsecureLogin=True for local development")
            login = (creds.username, creds.password) if creds is not None else (None, None)
            self._view._rebind(
                await self._root._call("login", login, {}, self._timeoutFor()))
            if self._opaque:
                self._learnTypes(
                    await self._root._call("types", (), {}, self._timeoutFor()))
            await self._resync()
        except (IncompatibleVersion, LoginFailed):
            self._giveUp(Failure())
            return
        except Exception as e:
            why = "no answer" if isinstance(e, defer.TimeoutError) else (
                str(e) or type(e).__name__)
            # A fault of this side's (not an aurora error, not a lost
            # connection) keeps its traceback.
            ours = not broker.disconnected and not isinstance(
                e, (Error, defer.TimeoutError))
            self._attemptFailed(f"connected, but the aurora handshake failed: {why}",
                                Failure() if ours else None)
            if not broker.disconnected:
                broker.close()
            return
        if broker.disconnected:  # just after its resync
            self._attemptFailed(f"connected, but the connection was lost: {_whyLost(broker)}")
            return
        self._problem = self._stage = None
        self._said.clear()
        self._failedAttempts = 0
        self._up = True
        self.everConnected = True
        self.log.info("connected to {endpoint}", endpoint=self._description)
        signals.send(signals.connected, self, registry=self._registry)
        waiters, self._waiters = self._waiters, []
        for d in waiters:
            d.callback(self._registry)

    def relayTypes(self) -> TypeTable:
        """
        Pass on, as opaque objects, the types the server advertises (what a
        relay does): from the next connection on, or now if connected.  A
        L{Server} serving this client's registry asks for it, and accepts
        from its own peers what this client accepts: the table returned.
        """
        if self._opaque:
            return self.typeTable
        self._opaque = True
        if self._up:
            self._root._call("types", (), {}, self._timeoutFor()).addCallbacks(
                self._learnTypes,
                lambda f: self.log.warn("cannot learn {endpoint}'s types: {why}",
                                        endpoint=self._description,
                                        why=f.getErrorMessage()))
        return self.typeTable

    async def relayedTypes(self) -> dict[str, Any]:
        """The types this process can pass on, once the server's are learned."""
        await self.firstConnection()
        return self.typeTable.advertised()

    async def firstConnection(self) -> None:
        """
        For a relay just started: wait while the very first attempt to reach
        the server is in progress (within the call deadline); once an
        attempt has failed, after it has ever connected, or once the client
        is stopped, return at once (its calls then fail at once with
        L{ConnectionLost}, naming why).  Never fails.
        """
        if self.everConnected or self._failedAttempts or self._stopped is not None \
                or self._fatal is not None:
            return
        connected = self.whenConnected()
        failed: defer.Deferred = defer.Deferred()
        self._failureWaiters.append(failed)
        # Whatever comes first ends the wait: connected, failed, given up,
        # stopped (which cancels whenConnected), or the deadline.
        first = defer.DeferredList([connected, failed], fireOnOneCallback=True,
                                   fireOnOneErrback=True, consumeErrors=True)
        try:
            await first.addTimeout(self._timeoutFor() or 30.0, self._clock)
        except (defer.TimeoutError, defer.FirstError):
            pass
        finally:
            if failed in self._failureWaiters:
                self._failureWaiters.remove(failed)
            if not connected.called:
                connected.cancel()

    def unreachable(self) -> str | None:
        """Why the server cannot be reached now, if an attempt failed since it last was."""
        if self._up:
            return None
        if self._fatal is not None:
            return f"{self._description} refused this client: {self._fatal.getErrorMessage()}"
        if self._stopped is not None:
            return f"{self._description}: this client was stopped"
        if not self._failedAttempts:
            return None
        return f"{self._description} is unreachable: {self._problem}"

    def _connectFailed(self, failure: Failure) -> None:
        self._attemptFailed(failure.getErrorMessage())

    def _attemptFailed(self, why: str, failure: Failure | None = None) -> None:
        """
        An attempt to connect failed: keep why, for the errors that name it,
        and log it only if it is news: a reason not logged since the
        connection was last up (a retry every few seconds for hours would
        otherwise say the same thing thousands of times; two reasons that
        alternate, such as a reset during or just after connecting, are said
        once each).  At most L{_MAX_REASONS} lines per outage: a reason may
        hold what a peer sent.
        """
        if self._stopped is not None:
            return  # stopping cancels the attempt under way: not news
        # It may hold what the server sent: one line, bounded, no escapes.
        why = _safeText(why, 300)
        self._problem = why
        self._failedAttempts += 1
        waiters, self._failureWaiters = self._failureWaiters, []
        for d in waiters:
            d.callback(None)
        if why in self._said or len(self._said) >= _MAX_REASONS:
            return
        self._said.add(why)
        said = ("cannot reach {endpoint}, retrying (logged again only if the "
                "reason changes): {why}")
        if failure is not None:
            self.log.failure(said, failure, endpoint=self._description, why=why)
        else:
            self.log.warn(said, endpoint=self._description, why=why)

    def _learnTypes(self, types: Any) -> None:
        opaque = {"copy": OpaqueCopy, "model": OpaqueModel, "error": OpaqueError}
        for name, info in types.items():
            if isinstance(info, dict) and info.get("kind") in opaque:
                self.typeTable.registerOpaque(name, opaque[info["kind"]], info.get("fields"),
                                              info.get("keyField"))

    def _timeoutFor(self) -> float | None:
        return self.factory.callTimeout

    def _ping(self) -> None:
        # Errors need no handling: silence is what the watchdog measures.
        self._root._call("ping", (), {}, self._timeout).addErrback(lambda f: None)

    def _lost(self) -> None:
        if self._up:
            self._up = False
            self.log.info("lost the connection to {endpoint}: {why}",
                          endpoint=self._description, why=_whyLost(self._broker) or "closed")
            signals.send(signals.disconnected, self)

    async def _resync(self) -> None:
        await self._tracker.resync(self._timeoutFor(), self.log)

    def _giveUp(self, failure: Failure) -> None:
        self._fatal = failure
        self.log.error("giving up on {endpoint}: {why}", endpoint=self._description,
                       why=_safeText(failure.getErrorMessage(), 300))
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
            if self._broker is not None and self._broker.transport is not None:
                # ClientService called loseConnection; TLS then also waits for
                # the producer to go (see Broker.close).
                self._broker.transport.unregisterProducer()
        # Every caller gets its own Deferred firing when the one stop is done.
        done: defer.Deferred = defer.Deferred()

        def stopped(result: object) -> object:
            done.callback(None)
            return result

        self._stopped.addBoth(stopped)
        return done
