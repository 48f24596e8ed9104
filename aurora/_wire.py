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

from twisted.internet import defer, tcp
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.reflect import qual
from twisted.spread import banana, jelly, pb
from twisted.spread.flavors import RemoteCacheObserver

from aurora import _banana, _plain, _types
from aurora._version import __version__
from aurora.errors import IncompatibleVersion, LimitExceeded, SerializationError

PROTOCOL_VERSION = 1
"""aurora's wire protocol version, exchanged by C{hello} at connect."""

REF_ATOM = b"aurora.ref"
"""C{[REF_ATOM, luid, [interface names], [descriptions]]}: a manager sent by
reference, with the description of each interface the connection has not
described yet (so a relay or the CLI knows its methods without its module)."""

MAX_MESSAGE_BYTES = 16 * 1024 * 1024
"""The largest message (one top-level banana expression) a peer may send."""

MAX_DEPTH = 100
"""The deepest nesting of lists in one message (unjelly recurses)."""

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


class _ErrorSecurity(Security):
    """In an error answer only: PB's own errors (e.g. "Invalid Object ID")."""

    def isTypeAllowed(self, typeName: Any) -> bool:
        if typeName in (b"twisted.spread.pb.CopyableFailure",
                        "twisted.spread.pb.CopyableFailure"):
            return True
        return super().isTypeAllowed(typeName)


ERROR_SECURITY = _ErrorSecurity()


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
    _isReady = False
    maxMessageBytes = MAX_MESSAGE_BYTES
    maxDepth = MAX_DEPTH
    _inMessage = 0  # bytes of the message being received, at most this
    _completed = False
    referenceLimit = pb.MAX_BROKER_REFS
    flow: Flow | None = None

    def connectionMade(self) -> None:
        self.lastReceived = self.factory.clock.seconds()
        self.describedInterfaces: set[str] = set()
        self._readyWaiters: list[defer.Deferred] = []
        self.flow = Flow(self, self.factory.clock, **self.factory.flowLimits)
        # Stock banana's decoder copies the rest of the buffer for every
        # token; this one reads at an offset (same wire format).
        self._decoder = _banana.Decoder(self._gotExpression)
        for name, value in getattr(self.factory, "wireLimits", {}).items():
            setattr(self, name, value)
        self.transport.registerProducer(self.flow, True)
        self._direct = isinstance(self.transport, tcp.Connection) and \
            hasattr(self.transport, "_tempDataBuffer")
        # Each message is written as soon as it is made (see _write): with
        # Nagle's algorithm a second small message would wait for the ACK of
        # the first, which the peer delays by up to 40 ms.
        socket = self.transport
        while socket is not None and not isinstance(socket, tcp.Connection):
            socket = getattr(socket, "transport", None)  # under TLS
        if socket is not None:
            socket.setTcpNoDelay(True)
        super().connectionMade()

    _direct = False  # whether the transport is a plain socket we may send on

    def sendEncoded(self, obj: Any) -> None:
        if self.currentDialect == b"pb":
            self._write(_banana.encode(obj))
        else:  # the handshake, or a peer that chose the "none" dialect
            self._write(_banana.encode(obj, vocabulary=None))

    def _write(self, data: bytes) -> None:
        corked = _Cork.pending
        # Only plain sockets are corked: TLS batches writes by itself, and
        # drops what is written after it started closing.
        if corked is None or not self._direct:
            self._send(data)
            return
        parts = corked.get(self)
        if parts is None:
            corked[self] = parts = []
            _Cork.sizes[self] = 0
        parts.append(data)
        _Cork.sizes[self] += len(data)
        if _Cork.sizes[self] > _Cork.LIMIT:
            # A burst: hand it to the transport now, so that a peer that
            # does not read pauses the Flow as it would without the cork.
            del corked[self]
            del _Cork.sizes[self]
            self._send(b"".join(parts))

    def _send(self, data: bytes) -> None:
        # Twisted's write only buffers: the bytes go out on the next reactor
        # turn, after two epoll_ctl calls to watch for writability.  When
        # nothing is queued before them, send them now; what the kernel does
        # not take is queued as usual, so the order of bytes is kept.
        t = self.transport
        if self._direct and t.connected and not t.disconnecting and \
                not getattr(t, "_aborting", False) and \
                not t._tempDataBuffer and len(t.dataBuffer) == t.offset:
            sent = t.writeSomeData(data)
            if isinstance(sent, int):
                if sent == len(data):
                    return
                data = data[sent:]
        t.write(data)

    def sendUpdate(self, cacheable: Any, update: bytes) -> bool:
        """
        Send C{update} (see L{sharedUpdate}) to this peer's mirror of
        C{cacheable}; False if the peer no longer mirrors it.
        """
        if self.disconnected:
            return False
        luid = self.cachedRemotelyAs(cacheable)
        if luid is None:
            return False
        self._write(b"".join((_UPDATE_HEAD, _banana.encode(self.newRequestID()),
                              _banana.encode(luid), update)))
        return True

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
            self._record("ref", luid, puid, True)
        else:
            self.localObjects[luid].incref()
            self._record("ref", luid, puid, False)
        return luid

    def cacheRemotely(self, instance: Any) -> Any:
        if len(self.remotelyCachedObjects) >= self.referenceLimit:
            raise _tooManyReferences(self.referenceLimit)
        luid = self.newLocalID()
        puid = instance.processUniqueID()
        self.remotelyCachedLUIDs[puid] = luid
        self.remotelyCachedObjects[luid] = pb.Local(instance, self.serializingPerspective)
        self._record("cache", luid, puid, True)
        return luid

    def cachedRemotelyAs(self, instance: Any, incref: int = 0) -> Any:
        luid = super().cachedRemotelyAs(instance, incref)
        if luid is not None and incref:
            self._record("cache", luid, instance.processUniqueID(), False)
        return luid

    # A message that fails half-way (a later value cannot be jellied, or is
    # over banana's limit) must not leave behind the references and model
    # observations its earlier values registered: the peer never learns of
    # them, and would be told "cached" for a model it never got.
    _txn: list[tuple[str, Any, Any, bool]] | None = None
    _lastTxn: list[tuple[str, Any, Any, bool]] = []

    def _record(self, kind: str, luid: Any, puid: Any, new: bool) -> None:
        if self._txn is not None:
            self._txn.append((kind, luid, puid, new))

    def _undo(self, txn: list[tuple[str, Any, Any, bool]]) -> None:
        if self.disconnected:
            return
        for kind, luid, puid, new in reversed(txn):
            if kind == "ref":
                if new:
                    self.localObjects.pop(luid, None)
                    self.luids.pop(puid, None)
                elif luid in self.localObjects:
                    self.localObjects[luid].decref()
            elif new:
                lobj = self.remotelyCachedObjects.pop(luid, None)
                self.remotelyCachedLUIDs.pop(puid, None)
                if lobj is not None:
                    lobj.object.stoppedObserving(
                        lobj.perspective,
                        RemoteCacheObserver(self, lobj.object, lobj.perspective))
            elif luid in self.remotelyCachedObjects:
                self.remotelyCachedObjects[luid].decref()

    def dataReceived(self, chunk: bytes) -> None:
        self.lastReceived = self.factory.clock.seconds()
        self._completed = False
        decoder = self._decoder
        outermost = _Cork.pending is None
        if outermost:
            _Cork.pending = {}
        try:
            decoder.feed(chunk)
        except Exception as e:
            # Malformed input (bad framing, a non-list expression, a reference
            # to nothing).  Stock Twisted logs a traceback per occurrence and
            # drops the connection; a hostile peer should not fill the log.
            self._refuse(f"a malformed message ({type(e).__name__}: {e})")
            return
        finally:
            if outermost:
                _Cork.flush()
        # Banana has no limit per message, only per token: count bytes since
        # the last complete expression (at most one chunk too many) and the
        # depth of the open lists, and cut the peer off past either.
        self._inMessage = len(chunk) if self._completed else self._inMessage + len(chunk)
        if self.disconnected or not (decoder.depth or decoder.pending):
            return
        if self._inMessage > self.maxMessageBytes or decoder.depth > self.maxDepth:
            self._refuse(f"a message over {self.maxMessageBytes} bytes or "
                         f"{self.maxDepth} levels deep")

    def _refuse(self, what: str) -> None:
        if self.disconnected:
            return
        _Watchdog.log.warn("{peer} sent {what}; dropping the connection",
                           peer=self.transport.getPeer(), what=what)
        self._decoder.reset()
        self._decoder.stopped = True
        if _Cork.pending is not None:
            _Cork.pending.pop(self, None)  # no answers to a refused peer
        self.transport.abortConnection()

    def _gotExpression(self, sexp: Any) -> None:
        self._completed = True
        self.callExpressionReceived(sexp)
        if self.disconnected:
            self._decoder.stopped = True

    def expressionReceived(self, sexp: Any) -> None:
        if _depth(sexp, self.maxDepth) > self.maxDepth:
            requestID = sexp[1] if len(sexp) > 1 and isinstance(sexp[1], int) else None
            if sexp[:1] == [b"message"] and requestID is not None:
                self._sendError(LimitExceeded(
                    f"the message nests deeper than {self.maxDepth} levels",
                    limit=self.maxDepth), requestID)
                return
            self._refuse(f"an expression over {self.maxDepth} levels deep")
            return
        super().expressionReceived(sexp)

    def connectionReady(self) -> None:
        super().connectionReady()
        self._isReady = True
        waiting, self._readyWaiters = self._readyWaiters, []
        for d in waiting:
            d.callback(self.remoteForName("root"))

    def whenReady(self) -> defer.Deferred:
        """
        The peer's root object, once PB's version exchange on I{this}
        connection is done; fails if this connection is lost first.  (PB's
        factory.getRootObject queues for whichever connection comes next and
        never fails over endpoints.)
        """
        if self._isReady and not self.disconnected:
            return defer.succeed(self.remoteForName("root"))
        if self.disconnected:
            return defer.fail(pb.PBConnectionLost("connection lost before it was ready"))
        d: defer.Deferred = defer.Deferred()
        self._readyWaiters.append(d)
        return d

    def connectionLost(self, reason: Any) -> None:
        if self._watch is not None:
            self._watch.stop()
        if self.flow is not None:
            # Not every transport tells its producer (TLS, lost mid-handshake,
            # may not): the lag timer must not outlive the connection.
            self.flow.stopProducing()
        waiting, self._readyWaiters = self._readyWaiters, []
        super().connectionLost(reason)
        for d in waiting:
            d.errback(pb.PBConnectionLost("connection lost before it was ready"))

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
            result = _plain.jellyPlain(object)
        except _plain.NotPlain:
            pass
        else:
            self._lastTxn = []  # nothing registered, nothing to undo
            return result
        outer, txn = self._txn, []
        self._txn = txn
        try:
            result = super().serialize(object, perspective, method, args, kw)
        except Exception as e:
            self._undo(txn)
            if isinstance(e, (jelly.InsecureJelly, NotImplementedError)):
                raise SerializationError(_describeUnsendable(e)) from None
            raise
        finally:
            self._txn = outer
        if outer is not None:
            outer.extend(txn)
        self._lastTxn = txn
        return result

    def _sendMessage(self, prefix: bytes, perspective: Any, objectID: Any,
                     message: bytes, args: Any, kw: Any) -> Any:
        txn: list[tuple[str, Any, Any, bool]] = []
        self._txn = txn
        try:
            result = super()._sendMessage(prefix, perspective, objectID, message,
                                          args, kw)
        except banana.BananaError as e:
            # Raised while encoding, after the answer Deferred was registered
            # under the newest request ID: without this it would never fire.
            self.waitingForAnswers.pop(self.currentRequestID, None)
            self._undo(txn)
            return defer.fail(_unencodable(e))
        finally:
            self._txn = None
        if isinstance(result, defer.Deferred) and result.called and \
                isinstance(result.result, Failure):
            self._undo(txn)  # the keywords failed after the arguments went in
        return result

    def _sendAnswer(self, netResult: Any, requestID: int) -> None:
        try:
            super()._sendAnswer(netResult, requestID)
        except banana.BananaError as e:
            # Stock PB lets this escape dataReceived and drops the connection.
            self._undo(self._lastTxn)
            self._sendError(_unencodable(e), requestID)

    def unserialize(self, sexp: Any, perspective: Any = None) -> Any:
        try:
            return _plain.unjellyPlain(sexp)
        except _plain.NotPlain:
            return super().unserialize(sexp, perspective)

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
        self.security = ERROR_SECURITY
        try:
            error = self.unserialize(fail)
        except Exception as e:
            error = _unreadable(e)
        finally:
            self.security = SECURITY
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


# [b"cachemessage", requestID, luid, b"update", answerRequired, args, kw]:
# what PB's RemoteCacheObserver.callRemote("update", name, value,
# pbanswer=False) sends, cut where the per-connection part ends.
_UPDATE_HEAD = _banana.listHeader(7) + _banana.encode(b"cachemessage")


def sharedUpdate(name: str, value: Any) -> bytes | None:
    """
    The encoded tail of a model update that is the same on every connection
    (a value made of basic types), so a change observed by many peers is
    encoded once; None when the value needs each connection's own jelly
    (it holds references or declared types).
    """
    try:
        args = _plain.jellyPlain((name, value))
    except _plain.NotPlain:
        return None
    try:
        return b"".join(_banana.encode(x) for x in (b"update", 0, args, [b"dictionary"]))
    except banana.BananaError:
        return None


class _Cork:
    """
    What the brokers write while this process handles what arrived: sent
    when it is done, one write per connection.  A batch of pipelined calls
    is answered with one send, and a burst of model changes reaches each
    observer in one, as Twisted's own buffering would do, without its
    per-write cost (see L{Broker._send}).
    """

    LIMIT = 64 * 1024  # bytes held for one connection, at most
    pending: dict[Broker, list[bytes]] | None = None
    sizes: dict[Broker, int] = {}

    @classmethod
    def flush(cls) -> None:
        pending, cls.pending = cls.pending, None
        cls.sizes = {}
        for broker, parts in pending.items():
            try:
                broker._send(parts[0] if len(parts) == 1 else b"".join(parts))
            except Exception:
                _Watchdog.log.failure("cannot write to {peer}",
                                      peer=broker.transport.getPeer())


def _depth(sexp: Any, limit: int) -> int:
    """How deep lists nest in C{sexp}, counting no further than C{limit} + 1."""
    deepest, stack = 0, [(sexp, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, list):
            if depth > deepest:
                deepest = depth
                if deepest > limit:
                    break
            stack.extend((v, depth + 1) for v in value if isinstance(v, list))
    return deepest


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
    Updates go out when the buffer drains.  A peer that stays behind longer than C{maxLag} seconds, or with
    more than C{maxPending} fields waiting, is disconnected (and resyncs when
    it reconnects, like any client).
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
        self.timer: Any = None
        self.pending: dict[tuple[Any, str], tuple[Any, Any]] = {}

    def pauseProducing(self) -> None:
        if not self.paused:
            self.paused = True
            self.since = self.clock.seconds()
            # A peer that does not read for maxLag is dropped, whatever is
            # waiting for it (answers too).  Reading from it is not paused:
            # TLS pauses this producer during its own handshake.
            self.timer = self.clock.callLater(self.maxLag, self._tooSlow)

    def _tooSlow(self) -> None:
        self.log.warn("{peer} has not read for {lag} s; disconnecting it",
                      peer=self.broker.transport.getPeer(), lag=self.maxLag)
        self.pending.clear()
        self.broker.transport.abortConnection()

    def resumeProducing(self) -> None:
        if self.timer is not None and self.timer.active():
            self.timer.cancel()
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
        if self.timer is not None and self.timer.active():
            self.timer.cancel()

    def forget(self, model: Any) -> None:
        """C{model} is no longer observed here: drop what waits for it."""
        for key in [k for k in self.pending if k[0] is model]:
            del self.pending[key]

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
    if isinstance(e, KeyError):
        what = f"a reference to an object this side does not know (id {e})"
    elif isinstance(e, jelly.InsecureJelly):
        what = f"a type that is not declared here ({e})"
    else:
        what = f"{type(e).__name__}: {e}"
    return SerializationError(
        f"the peer sent a value this process cannot accept: {what}; a type "
        "must be declared (imported) on both sides")


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
        # Interfaces this client's server described (see remote.learnInterface).
        self.learned: dict[str, Any] = {}


class ServerFactory(pb.PBServerFactory):
    """A PB server factory building aurora brokers; settings as L{ClientFactory}."""

    protocol = Broker
    tracker = None  # what a server receives is not re-fetched on reconnect
    learned = None  # a server never believes its peers' interface descriptions

    def admit(self) -> bool:
        """Whether one more connection may be served."""
        return True

    def buildProtocol(self, addr: Any) -> Any:
        if not self.admit():
            return None  # Twisted closes the connection at once
        return super().buildProtocol(addr)

    def __init__(self, root: Any, wrapReference: Callable[..., Any], *,
                 callTimeout: float | None, clock: Any,
                 flowLimits: dict[str, Any] | None = None,
                 wireLimits: dict[str, Any] | None = None) -> None:
        super().__init__(root, security=SECURITY)
        self.wrapReference = wrapReference
        self.callTimeout = callTimeout
        self.clock = clock
        self.flowLimits = flowLimits or {}
        self.wireLimits = wireLimits or {}
