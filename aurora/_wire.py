"""
What may cross the wire, and what happens when something may not.

Every aurora connection is a L{Broker} with L{SECURITY} as its jelly taster:
basic Python types, PB's reference atoms and the classes declared in
L{aurora._types}, nothing else, in either direction.  The broker turns PB's
silent failure modes into errors the caller receives: a value that cannot be
jellied, a token over banana's size limit (stock PB leaves the caller's
Deferred waiting forever), an answer the caller cannot unjelly (stock PB drops
the connection, Twisted #10910).
"""

from __future__ import annotations

import datetime
import decimal
from typing import Any, Callable

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.reflect import qual
from twisted.spread import banana, jelly, pb

from aurora import _types
from aurora._version import __version__
from aurora.errors import IncompatibleVersion, LimitExceeded, SerializationError

PROTOCOL_VERSION = 1
"""aurora's wire protocol version, exchanged by C{hello} at connect."""

REF_ATOM = b"aurora.ref"
"""C{[REF_ATOM, luid, [interface names], [descriptions]]}: a manager sent by
reference, with the description of each interface the connection has not
described yet (so a relay or the CLI knows its methods without its module)."""

_RECEIVABLE = frozenset(
    [
        # jelly's atoms for basic values
        b"None", b"boolean", b"unicode", b"decimal", b"datetime", b"date",
        b"time", b"timedelta", b"list", b"tuple", b"dictionary", b"set",
        b"frozenset", b"reference", b"dereference",
        # PB's references: a reference sent back to its origin, a remote
        # reference, a model again on a connection that mirrors it already,
        # a mirror sent back to its origin
        b"local", b"remote", b"cached", b"lcache",
        # PB's own errors (e.g. "Invalid Object ID"), copied as plain state
        b"twisted.spread.pb.CopyableFailure",
        REF_ATOM,
    ]
)

# jelly asks the taster about qual(type(value)) before sending any value
# that is not Jellyable.
_SENDABLE = frozenset(
    qual(t).encode("utf-8")
    for t in (
        bytes, str, int, float, bool, type(None), list, tuple, dict, set,
        frozenset, datetime.datetime, datetime.date, datetime.time,
        datetime.timedelta, decimal.Decimal,
    )
)


class Security(jelly.SecurityOptions):
    """
    A jelly taster that allows only basic values and declared types.

    Twisted's own L{jelly.SecurityOptions} allows any dotted type name and
    defers to a module and class check; this one never resolves a name to a
    module or class at all (Twisted #6355).
    """

    def isTypeAllowed(self, typeName: Any) -> bool:
        if isinstance(typeName, str):
            typeName = typeName.encode("utf-8")
        return (
            typeName in _RECEIVABLE
            or typeName in _SENDABLE
            or _types.isDeclared(typeName)
        )

    def isModuleAllowed(self, moduleName: Any) -> bool:
        return False

    def isClassAllowed(self, klass: Any) -> bool:
        return False


SECURITY = Security()


def _describeUnsendable(e: Exception) -> str:
    if isinstance(e, NotImplementedError) and "tzinfo" in str(e):
        return (
            "cannot send a timezone-aware datetime or time: send an epoch float "
            "or an ISO 8601 string"
        )
    return (
        f"cannot send this value ({e}): only basic types (str, bytes, int, "
        "float, bool, None, list, tuple, dict, set, Decimal, naive datetimes) "
        "and declared Copyable, Model, Error and Manager classes can travel"
    )


class Broker(pb.Broker):
    """
    A PB broker whose failures reach the caller as aurora errors.

    C{factory} is a L{ClientFactory} or L{ServerFactory}; it supplies
    C{wrapReference}, which turns an incoming manager reference into what the
    application sees.
    """

    lastReceived = 0.0
    _watch: Any = None
    referenceLimit = pb.MAX_BROKER_REFS
    flow: Flow | None = None

    def connectionMade(self) -> None:
        self.lastReceived = self.factory.clock.seconds()
        self.describedInterfaces: set[str] = set()
        self.flow = Flow(self, self.factory.clock, **self.factory.flowLimits)
        self.transport.registerProducer(self.flow, True)
        super().connectionMade()

    def close(self) -> None:
        """
        Close the connection.  Use this rather than the transport's own
        loseConnection: TLS waits for the transport's producer (the L{Flow})
        to be unregistered before it shuts down, forever otherwise.
        """
        self.transport.loseConnection()
        self.transport.unregisterProducer()

    def registerPageProducer(self, pager: Any) -> None:
        raise NotImplementedError(
            "aurora connections do not carry PB pagers: their transport's "
            "producer slot paces model updates")

    # PB's limit is one process-wide number, MAX_BROKER_REFS; here each
    # connection has its own (a relay link asks for more at hello).  A
    # refusal is an error for that call, never a disconnect.
    def registerReference(self, object: Any) -> Any:
        puid = object.processUniqueID()
        luid = self.luids.get(puid)
        if luid is None:
            if len(self.localObjects) >= self.referenceLimit:
                raise _tooManyReferences(self.referenceLimit)
            luid = self.newLocalID()
            self.localObjects[luid] = pb.Local(object)
            self.luids[puid] = luid
        else:
            self.localObjects[luid].incref()
        return luid

    def cacheRemotely(self, instance: Any) -> Any:
        if len(self.remotelyCachedObjects) >= self.referenceLimit:
            raise _tooManyReferences(self.referenceLimit)
        luid = self.newLocalID()
        self.remotelyCachedLUIDs[instance.processUniqueID()] = luid
        self.remotelyCachedObjects[luid] = pb.Local(instance, self.serializingPerspective)
        return luid

    def dataReceived(self, chunk: bytes) -> None:
        self.lastReceived = self.factory.clock.seconds()
        super().dataReceived(chunk)

    def connectionLost(self, reason: Any) -> None:
        if self._watch is not None:
            self._watch.stop()
        super().connectionLost(reason)

    def watch(self, timeout: float, interval: float | None = None,
              ping: Callable[[], Any] | None = None) -> None:
        """
        Abort the connection once nothing has arrived for C{timeout} seconds;
        with C{ping}, call it every C{interval} seconds to provoke an answer.
        """
        if self._watch is not None:
            self._watch.stop()
        self._watch = _Watchdog(self, self.factory.clock, timeout, interval, ping)
        self._watch.start()

    def serialize(self, object: Any, perspective: Any = None, method: Any = None,
                  args: Any = None, kw: Any = None) -> Any:
        try:
            return super().serialize(object, perspective, method, args, kw)
        except (jelly.InsecureJelly, NotImplementedError) as e:
            raise SerializationError(_describeUnsendable(e)) from None

    def _sendMessage(self, prefix: bytes, perspective: Any, objectID: Any,
                     message: bytes, args: Any, kw: Any) -> Any:
        try:
            return super()._sendMessage(prefix, perspective, objectID, message,
                                        args, kw)
        except banana.BananaError as e:
            # Raised while encoding, after the answer Deferred was registered
            # under the newest request ID: without this it would never fire.
            self.waitingForAnswers.pop(self.currentRequestID, None)
            return defer.fail(_unencodable(e))

    def _sendAnswer(self, netResult: Any, requestID: int) -> None:
        try:
            super()._sendAnswer(netResult, requestID)
        except banana.BananaError as e:
            # Stock PB lets this escape dataReceived and drops the connection.
            self._sendError(_unencodable(e), requestID)

    def proto_answer(self, requestID: int, netResult: Any) -> None:
        d = self.waitingForAnswers.pop(requestID)
        try:
            result = self.unserialize(netResult)
        except Exception as e:
            d.errback(Failure(_unreadable(e)))
        else:
            d.callback(result)

    def proto_error(self, requestID: int, fail: Any) -> None:
        d = self.waitingForAnswers.pop(requestID)
        try:
            error = self.unserialize(fail)
        except Exception as e:
            error = _unreadable(e)
        d.errback(error if isinstance(error, Failure) else Failure(error))

    def receiveReference(self, luid: int, names: Any, descriptions: Any) -> Any:
        """An incoming manager reference: wrap it for the application."""
        ref = pb.RemoteReference(self.unserializingPerspective, self, luid, 1)
        if not isinstance(names, (list, tuple)):
            names = ()
        names = tuple(n.decode("utf-8") for n in names if isinstance(n, bytes))
        if not isinstance(descriptions, list):
            descriptions = []
        return self.factory.wrapReference(ref, names, self.factory, descriptions)


class _Watchdog:
    """
    Declares a connection dead when it has been silent too long.

    A closed socket is noticed by TCP; a silent partition (packets dropped, no
    RST) is not, so the client pings and both sides watch what arrives.  One
    self-rescheduling timer serves both: it wakes at the next ping or at the
    silence deadline, whichever is first, so nothing is paid per packet.
    """

    log = Logger()

    def __init__(self, broker: Broker, clock: Any, timeout: float,
                 interval: float | None, ping: Callable[[], Any] | None) -> None:
        self.broker = broker
        self.clock = clock
        self.timeout = timeout
        self.interval = interval
        self.ping = ping
        self.lastPing = clock.seconds()
        self.timer: Any = None

    def start(self) -> None:
        self._schedule(self.clock.seconds())

    def stop(self) -> None:
        if self.timer is not None and self.timer.active():
            self.timer.cancel()
        self.timer = None

    def _schedule(self, now: float) -> None:
        wake = self.broker.lastReceived + self.timeout
        if self.ping is not None and self.interval:
            wake = min(wake, self.lastPing + self.interval)
        self.timer = self.clock.callLater(max(0.0, wake - now), self._tick)

    def _tick(self) -> None:
        self.timer = None
        now = self.clock.seconds()
        silent = now - self.broker.lastReceived
        if silent >= self.timeout - 1e-9:
            peer = self.broker.transport.getPeer()
            self.log.warn("nothing from {peer} for {silent:.1f} s; dropping the "
                          "connection", peer=peer, silent=silent)
            self.broker.transport.abortConnection()
            return
        if self.ping is not None and self.interval and \
                now - self.lastPing >= self.interval - 1e-9:
            self.lastPing = now
            self.ping()
        self._schedule(now)


class Flow:
    """
    Paces model updates to one connection.

    Registered as the transport's streaming producer: while the peer does
    not read fast enough (the transport's buffer is full), updates are not
    written but kept, one per model and field, the latest value winning.
    They go out when the buffer drains.  A peer that stays behind longer
    than C{maxLag} seconds, or with more than C{maxPending} fields waiting,
    is disconnected (and resyncs when it reconnects, like any client).
    """

    log = Logger()

    def __init__(self, broker: Broker, clock: Any, maxPending: int = 10_000,
                 maxLag: float = 30.0) -> None:
        self.broker = broker
        self.clock = clock
        self.maxPending = maxPending
        self.maxLag = maxLag
        self.paused = False
        self.since = 0.0
        self.pending: dict[tuple[Any, str], tuple[Any, Any]] = {}

    def pauseProducing(self) -> None:
        if not self.paused:
            self.paused = True
            self.since = self.clock.seconds()

    def resumeProducing(self) -> None:
        self.paused = False
        pending, self.pending = self.pending, {}
        items = iter(pending.items())
        for (model, name), (observer, value) in items:
            if self.paused:  # the buffer filled up again: keep the rest
                self.pending[(model, name)] = (observer, value)
                self.pending.update(items)
                break
            model._send(self.broker, observer, name, value)

    def stopProducing(self) -> None:
        self.pending.clear()

    def hold(self, model: Any, observer: Any, name: str, value: Any) -> None:
        """Keep C{model.name = value} until the peer catches up."""
        self.pending[(model, name)] = (observer, value)
        lag = self.clock.seconds() - self.since
        if len(self.pending) > self.maxPending or lag > self.maxLag:
            self.log.warn(
                "{peer} is {lag:.1f} s and {n} updates behind; disconnecting it",
                peer=self.broker.transport.getPeer(), lag=lag, n=len(self.pending))
            self.pending.clear()
            self.broker.transport.abortConnection()


def _tooManyReferences(limit: int) -> LimitExceeded:
    return LimitExceeded(
        f"this connection holds {limit} references already, its limit; a "
        "relay or a client that needs more asks for a higher referenceLimit",
        limit=limit,
    )


def _unencodable(e: Exception) -> Exception:
    if "too long" not in str(e):
        return SerializationError(f"cannot encode this message: {e}")
    return LimitExceeded(
        f"message too large: {e}; PB refuses any single string or list over "
        f"{banana.SIZE_LIMIT} bytes/items (twisted.spread.banana.SIZE_LIMIT): "
        "send it in pieces",
        limit=banana.SIZE_LIMIT,
    )


def _unreadable(e: Exception) -> SerializationError:
    return SerializationError(
        f"the peer sent a value this process cannot accept ({e}): an "
        "undeclared type, or a class this process has not imported"
    )


def _receiveRef(unjellier: Any, sexp: list) -> Any:
    if len(sexp) != 4 or not isinstance(sexp[1], int):
        raise jelly.InsecureJelly(f"malformed {REF_ATOM!r}")
    return unjellier.invoker.receiveReference(
        sexp[1], sexp[2], unjellier.unjelly(sexp[3]))


jelly.unjellyableRegistry[REF_ATOM] = _receiveRef


def versionInfo() -> dict[str, Any]:
    return {"protocol": PROTOCOL_VERSION, "aurora": __version__}


def checkVersion(peer: Any, side: str) -> None:
    """Raise L{IncompatibleVersion} unless C{peer} speaks our protocol."""
    theirs = peer.get("protocol") if isinstance(peer, dict) else None
    if theirs != PROTOCOL_VERSION:
        release = peer.get("aurora", "?") if isinstance(peer, dict) else "?"
        raise IncompatibleVersion(
            f"the {side} speaks aurora protocol {theirs!r} (aurora {release}); "
            f"this process speaks protocol {PROTOCOL_VERSION} "
            f"(aurora {__version__})",
            local=PROTOCOL_VERSION,
            remote=theirs if isinstance(theirs, int) else None,
        )


class ClientFactory(pb.PBClientFactory):
    """
    A PB client factory building aurora brokers; also the settings every
    wrapper on its connections uses (deadline, clock, result tracker).
    """

    protocol = Broker

    def __init__(self, wrapReference: Callable[..., Any], *,
                 callTimeout: float | None, clock: Any, tracker: Any = None) -> None:
        super().__init__(security=SECURITY)
        self.wrapReference = wrapReference
        self.callTimeout = callTimeout
        self.clock = clock
        self.tracker = tracker
        self.flowLimits: dict[str, Any] = {}


class ServerFactory(pb.PBServerFactory):
    """A PB server factory building aurora brokers; settings as L{ClientFactory}."""

    protocol = Broker
    tracker = None  # what a server receives is not re-fetched on reconnect

    def __init__(self, root: Any, wrapReference: Callable[..., Any], *,
                 callTimeout: float | None, clock: Any,
                 flowLimits: dict[str, Any] | None = None) -> None:
        super().__init__(root, security=SECURITY)
        self.wrapReference = wrapReference
        self.callTimeout = callTimeout
        self.clock = clock
        self.flowLimits = flowLimits or {}
