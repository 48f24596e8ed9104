"""
The connection: a PB broker whose failures reach the caller as aurora
errors (L{Broker}), and the factories that build it for a client and a
server.

PB's silent failure modes become errors the caller receives: a value that
cannot be jellied, a token over banana's size limit (stock PB leaves the
caller's Deferred waiting forever), an answer the caller cannot unjelly
(stock PB drops the connection, Twisted #10910).  What may cross is decided
in L{aurora._jelly}; the pacing, liveness and write batching of a connection
are L{aurora._flow}, L{aurora._heartbeat} and L{aurora._cork}.
"""

from __future__ import annotations

import socket as _socket
from typing import Any, Callable

from twisted.internet import defer, tcp
from twisted.internet.protocol import connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.reflect import qual
from twisted.spread import banana, jelly, pb
from zope.interface import implementer

from aurora import _banana, _plain
from aurora._cork import Cork
from aurora._flow import Flow
from aurora._handshake import _whyNotReady
from aurora._heartbeat import Watchdog
from aurora._jelly import (
    _UPDATE_HEAD,
    SECURITY,
    Security,
    _describeUnsendable,
    _expandedSize,
    _unencodable,
    _unreadable,
)
from aurora._limits import DecodingPool, Limits
from aurora._pbcompat import PBBroker, canWriteDirectly, writeNow
from aurora._quiet import LogLimiter
from aurora._seams import IAccess, IConnection, ICorked
from aurora._types import TypeTable
from aurora.errors import LimitExceeded, SerializationError, _safeText

PROBE_ID = b"aurora.probe"
"""The object a server's idle probe is addressed to: no peer has it, so any
PB peer answers with an error, which is all the probe asks for."""

# The setting that bounds each kind of refusal, for messages people can act on.
_SETTING = {"bytes": "maxMessageBytes", "items": "maxMessageItems",
            "depth": "maxDepth", "pool": "maxDecodingBytes/maxDecodingItems"}

# What a malformed but well-framed message raises while PB dispatches it
# (unknown or unhashable ids, wrong arity, bad text, refused types): the
# peer's fault.  Anything else is a fault of this side's code.
_PEER_FAULTS = (pb.ProtocolError, pb.Error, KeyError, IndexError, TypeError,
                ValueError, UnicodeError, jelly.InsecureJelly)

# What a peer may send, and the method that takes it.
_COMMANDS = {name: "proto_" + name.decode() for name in (
    b"version", b"message", b"cachemessage", b"answer", b"error", b"decref",
    b"decache", b"uncache", b"didNotUnderstand")}


def _answerable(head: list[Any]) -> bool:
    """Whether a refused message can be answered: a call or an answer, by id."""
    if len(head) < 2 or type(head[1]) is not int:
        return False
    if head[0] in (b"message", b"cachemessage"):
        return len(head) >= 5 and type(head[4]) is int
    return head[0] in (b"answer", b"error")


def _tooManyReferences(limit: int) -> LimitExceeded:
    return LimitExceeded(
        f"this connection holds {limit} references already, its referenceLimit "
        "(a server grants an identity more at login with Server(grants=...); a "
        "client sets its own with Client(referenceLimit=...))",
        limit=limit,
    )


class Local:
    """
    An object of this side's that the peer holds, in the connection's tables:
    with how many references to it the peer holds (one per receipt, until it
    gives them back) and the perspective it was sent under (PB's; aurora's
    is always None).
    """

    def __init__(self, object: Any, perspective: Any = None) -> None:
        self.object = object
        self.perspective = perspective
        self.refcount = 1

    def incref(self) -> int:
        self.refcount += 1
        return self.refcount

    def decref(self) -> int:
        self.refcount -= 1
        return self.refcount

    def __repr__(self) -> str:
        return f"<Local {self.object!r} ref:{self.refcount}>"


class Reference(jelly.Jellyable):
    """
    An object on the peer, as this side holds it: what C{callRemote} calls,
    by the peer's id for it (C{luid}).  aurora's own, in place of PB's
    C{RemoteReference}: it calls the broker's public L{Broker.sendMessage}.

    A C{counted} reference holds one of the count the peer keeps for the id
    (one per receipt), given back with a C{decref} when it is collected; the
    peer's root is not counted.  Sent back to the peer it travels as
    C{[b"local", luid]}: the peer gets its own object.  (Its new home, once
    the README's architecture table lists it: C{aurora/_reference.py}.)
    """

    def __init__(self, broker: Broker, luid: Any, counted: bool = True) -> None:
        self.broker = broker
        self.luid = luid
        self.counted = counted

    def callRemote(self, _name: str | bytes, *args: Any, **kw: Any) -> Any:
        """
        Call C{_name} on the peer's object: a Deferred of the result (None
        with C{pbanswer=False}: no answer is asked for).
        """
        name = _name if isinstance(_name, bytes) else _name.encode("utf-8")
        return self.broker.sendMessage(b"", None, self.luid, name, args, kw)

    def jellyFor(self, jellier: Any) -> Any:
        if jellier.invoker is not self.broker:
            raise SerializationError(
                "a reference to a peer's object can only be sent back to that peer")
        return [b"local", self.luid]

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Reference):
            return NotImplemented
        return other.broker is self.broker and other.luid == self.luid

    def __hash__(self) -> int:
        return hash(self.luid)

    def __repr__(self) -> str:
        return f"<aurora.Reference {self.luid!r:.40} on {self.broker!r}>"

    def __del__(self) -> None:
        if self.counted:
            self.broker.sendDecRef(self.luid)


class Observer:
    """
    The peer's mirror of one of this side's models, as the model holds it:
    what its updates are sent through, as a C{cachemessage} to the id the
    peer mirrors it by.  aurora's own, in place of PB's
    C{RemoteCacheObserver}.  (Its new home: C{aurora/_reference.py}.)
    """

    def __init__(self, broker: Broker, cached: Any) -> None:
        self.broker = broker
        self.cached = cached

    def callRemote(self, _name: str | bytes, *args: Any, **kw: Any) -> Any:
        """
        Call C{_name} on the mirror (as L{Reference.callRemote}); a
        C{ProtocolError} if the peer no longer mirrors the model.
        """
        luid = self.broker.cachedRemotelyAs(self.cached)
        if luid is None:
            raise pb.ProtocolError("the peer does not mirror this model (any more)")
        name = _name if isinstance(_name, bytes) else _name.encode("utf-8")
        return self.broker.sendMessage(b"cache", None, luid, name, args, kw)


@implementer(IConnection, ICorked)
class Broker(PBBroker):
    """
    A PB broker whose failures reach the caller as aurora errors.

    C{factory} is a L{ClientFactory} or L{ServerFactory}; it supplies
    C{wrapReference}, which turns an incoming manager reference into what the
    application sees, and the L{Cork} that batches this connection's writes.

    @param access: what the peer may use (see L{mayUse}); None, everything.
    """

    # Twisted types these as Optional[Factory] and Optional[ITransport]; a
    # connected Broker's are one of the factories below and a TCP or TLS
    # transport, whose attributes (clock, limits, dataBuffer, ...) it uses.
    factory: Any
    transport: Any
    # Request id to Deferred (Twisted's class attribute is None, as it is
    # again once the connection is lost).
    waitingForAnswers: Any

    lastReceived = 0.0
    _watch: Any = None
    _isReady = False
    limits = Limits()
    loggedIn = True  # a server's connections start out not logged in
    referenceLimit = limits.referenceLimit
    flow: Flow | None = None
    _socket: Any = None  # the TCP connection under any TLS
    messageSince: float | None = None  # when the message under way began
    _refusal: _banana.Refusal | None = None  # of the message being skipped
    _firstBytes = b""
    _whyLost: str | None = None  # why the connection never became ready
    answering = True
    """Whether the call being dispatched wants an answer (when it does not,
    a manager's result is not serialized: nothing would tell the peer of the
    references that would register)."""
    lostReason: Failure | None = None
    """Why the connection was lost, once it is (PB's disconnect callbacks
    are not told)."""

    def __init__(self, isClient: bool = True, security: Any = SECURITY,
                 access: IAccess | None = None) -> None:
        super().__init__(isClient, security)
        self.access = access
        # What this side handed the peer by reference: local id (or a name
        # such as b"root") to its entry, and id(object) to its local id.
        # Ids count up from 1, shared with the models the peer observes.
        self.localObjects: dict[Any, Local] = {}
        self.luids: dict[Any, int] = {}
        self.currentLocalID = 0
        # This side's models the peer mirrors: local id to entry, and
        # id(model) to local id.
        self.remotelyCachedObjects: dict[Any, Local] = {}
        self.remotelyCachedLUIDs: dict[Any, int] = {}
        # The peer's models this side mirrors: the peer's id to the
        # subscription that follows it (see aurora._model.Subscription).
        self.locallyCachedObjects: dict[Any, Any] = {}

    def connectionMade(self) -> None:
        factory = self.factory
        self._cork: Cork = factory.cork
        self.lastReceived = factory.clock.seconds()
        self.describedInterfaces: set[str] = set()
        self._readyWaiters: list[defer.Deferred] = []
        self.flow = Flow(self, factory.clock, **factory.flowLimits)
        self._pool: DecodingPool | None = getattr(factory, "pool", None)
        self.peerLog: LogLimiter = factory.peerLog
        self._pauses: set[str] = set()
        self._callsInProgress = 0
        # Stock banana's decoder copies the rest of the buffer for every
        # token; this one reads at an offset (same wire format), and holds
        # each message to this connection's budgets as it decodes.
        self._decoder = _banana.Decoder(
            self._gotExpression, onRefused=self._onRefused, onSkipped=self._onSkipped)
        self.setLimits(factory.limits, loggedIn=factory.loggedIn)
        self.transport.registerProducer(self.flow, True)
        self._direct = canWriteDirectly(self.transport)
        # Each message is written as soon as it is made (see _write): with
        # Nagle's algorithm a second small message would wait for the ACK of
        # the first, which the peer delays by up to 40 ms.
        socket = self.transport
        while socket is not None and not isinstance(socket, tcp.Connection):
            socket = getattr(socket, "transport", None)  # under TLS
        if socket is not None:
            socket.setTcpNoDelay(True)
        self._socket = socket
        super().connectionMade()
        idle = getattr(factory, "idleTimeout", None)
        if idle:
            self.watchIdle(idle)

    def watchIdle(self, idleTimeout: float, timeout: float | None = None) -> None:
        """
        A server's watch on its peer: probe it after C{idleTimeout} seconds
        of silence and drop it if the probe goes unanswered for half as long
        again (or after C{timeout} of silence, the peer's own heartbeat
        promise, if shorter); drop it too if one message takes longer than
        C{idleTimeout} to arrive (a peer trickling bytes to hold a slot).
        """
        limit = 1.5 * idleTimeout if timeout is None else min(1.5 * idleTimeout, timeout)
        self.watch(limit, idleTimeout, self.probe, quiet=True,
                   messageTimeout=idleTimeout)

    def setLimits(self, limits: Limits, *, loggedIn: bool = True) -> None:
        """This connection's budgets from now on (see L{Limits})."""
        self.limits = limits
        self.loggedIn = loggedIn
        self.referenceLimit = limits.referenceLimit
        decoder = self._decoder
        decoder.maxBytes = limits.maxMessageBytes
        decoder.maxItems = limits.maxMessageItems
        decoder.maxDepth = limits.maxDepth

    def mayUse(self, interfaceName: str) -> bool:
        """
        Whether the peer may use managers under this interface: asked of every
        manager that crosses this connection and every call it makes.  A
        server decides it (its identity's interfaces, a relay's allow-list:
        see L{IAccess}); aurora's own interfaces are always usable.
        """
        access = self.access
        return access is None or interfaceName.startswith("aurora.interfaces.") \
            or access.mayUse(interfaceName)

    @property
    def peer(self) -> str:
        """The peer's address, for log lines."""
        address = self.transport.getPeer() if self.transport is not None else None
        host, port = getattr(address, "host", None), getattr(address, "port", None)
        return f"{host}:{port}" if host is not None else str(address)

    _direct = False  # whether the transport is a plain socket we may send on

    _held: list[Any] | None = None

    def holdUntilSent(self, obj: Any) -> None:
        """
        Keep C{obj} alive until the next message is written.  A mirror sent
        back to its origin is named by the origin's id; dropped before the
        answer naming it leaves, its decache would overtake the answer and
        the origin would no longer know that id.
        """
        if self._held is None:
            self._held = []
        self._held.append(obj)

    def sendEncoded(self, obj: Any) -> None:
        # What this side would refuse to receive, it does not build to send.
        limit = self.limits.maxMessageBytes
        try:
            if self.currentDialect == b"pb":
                self._write(_banana.encode(obj, limit=limit))
            else:  # the handshake, or a peer that chose the "none" dialect
                self._write(_banana.encode(obj, vocabulary=None, limit=limit))
        finally:
            self._held = None

    def _write(self, data: bytes) -> None:
        # Only plain sockets are corked: TLS batches writes by itself, and
        # drops what is written after it started closing.
        if self._direct:
            held = self._cork.take(self, data)
            if held is None:
                return
            data = held
        self._send(data)

    def sendHeld(self, data: bytes) -> None:
        """What the L{Cork} held for this connection, sent (see L{ICorked})."""
        try:
            self._send(data)
        except Exception:
            self.factory.errorLog.failure(("write", id(self)),
                                          "cannot write to {peer}", peer=self.peer)

    def _send(self, data: bytes) -> None:
        if self.disconnected:
            # A decref from a reference collected after the connection was
            # lost: real transports drop it, in-memory ones would raise.
            return
        flow = self.flow
        if flow is not None and (flow.paused or flow.outbox):
            # The transport's buffer is full: what is written waits here,
            # counted against maxOutboundBytes (Twisted's own buffer has no
            # bound: a peer that does not read would make it grow forever).
            flow.queue(data)
            return
        # Sent now when nothing waits ahead of it (see writeNow); what the
        # kernel does not take is queued as usual.
        if self._direct:
            data = writeNow(self.transport, data)
            if not data:
                return
        self.transport.write(data)

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

    # -- the local-object table: this side's objects the peer holds

    def newLocalID(self) -> int:
        """The id for the next object handed out or observed (1, 2, ...)."""
        self.currentLocalID += 1
        return self.currentLocalID

    def setNameForLocal(self, name: str | bytes, object: Any) -> None:
        """Publish C{object} under C{name} (a server's C{"root"}), uncounted."""
        if isinstance(name, str):
            name = name.encode("utf-8")
        self.localObjects[name] = Local(object)

    def localObjectForID(self, luid: Any) -> Any:
        """The object handed out as C{luid} (or named so), or None."""
        entry = self.localObjects.get(luid)
        return None if entry is None else entry.object

    def proto_decref(self, objectID: Any) -> None:
        # The peer dropped one of its references; the last frees the object.
        entry = self.localObjects[objectID]
        if entry.decref() == 0:
            # (A named object is in no luids: the KeyError is the peer's
            # fault, and the name stays.)
            del self.luids[entry.object.processUniqueID()]
            del self.localObjects[objectID]

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
            self.localObjects[luid] = Local(object)
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
        self.remotelyCachedObjects[luid] = Local(instance, self.serializingPerspective)
        self._record("cache", luid, puid, True)
        return luid

    # -- the cache tables: models mirrored across this connection

    def cachedRemotelyAs(self, instance: Any, incref: int = 0) -> Any:
        """
        The id the peer mirrors C{instance} (a model of this side's) by, or
        None; with C{incref}, it is being sent again: one more receipt for
        the peer to give back.
        """
        puid = instance.processUniqueID()
        luid = self.remotelyCachedLUIDs.get(puid)
        if luid is not None and incref:
            self.remotelyCachedObjects[luid].incref()
            self._record("cache", luid, puid, False)
        return luid

    def remotelyCachedForLUID(self, luid: Any) -> Any:
        """This side's model the peer mirrors as C{luid} (a mirror sent back)."""
        return self.remotelyCachedObjects[luid].object

    def decCacheRef(self, objectID: Any) -> None:
        """Give back one receipt of the peer's model C{objectID}."""
        self.sendCall(b"decache", objectID)

    def proto_decache(self, objectID: Any) -> None:
        # The peer gave back a receipt; after the last it no longer mirrors
        # the model, and is told it may forget the id.
        entry = self.remotelyCachedObjects[objectID]
        if entry.decref() == 0:
            self._stopObserving(entry)
            del self.remotelyCachedLUIDs[entry.object.processUniqueID()]
            del self.remotelyCachedObjects[objectID]
            self.sendCall(b"uncache", objectID)

    def _stopObserving(self, entry: Local) -> None:
        try:
            entry.object.stoppedObserving(entry.perspective, Observer(self, entry.object))
        except Exception:
            self.factory.errorLog.failure(
                ("stoppedObserving", id(self)), "a model observed by {peer} failed "
                "to stop observing", peer=self.peer)

    def cacheLocally(self, cid: Any, instance: Any) -> None:
        """Mirror the peer's model C{cid} with C{instance}, a subscription."""
        # A model a client sends becomes a subscription on the server: state
        # the peer makes the server hold, counted like references.  (A
        # client mirrors what its own calls asked for.)
        if self.factory.countPeerCaches and cid not in self.locallyCachedObjects and \
                len(self.locallyCachedObjects) >= self.referenceLimit:
            raise _tooManyReferences(self.referenceLimit)
        self.locallyCachedObjects[cid] = instance

    def cachedLocallyAs(self, cid: Any) -> Any:
        """The subscription that mirrors the peer's model C{cid}."""
        return self.locallyCachedObjects[cid]

    def receiveCached(self, luid: Any) -> Any:
        """A model this side mirrors already, sent again (C{[b"cached", luid]})."""
        return self.locallyCachedObjects[luid].receivedAgain()

    def proto_uncache(self, objectID: Any) -> None:
        # The origin forgot the model: the id is free, nothing to give back.
        self.locallyCachedObjects.pop(objectID).broker = None

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
                    lobj.object.stoppedObserving(lobj.perspective, Observer(self, lobj.object))
            elif luid in self.remotelyCachedObjects:
                self.remotelyCachedObjects[luid].decref()

    def dataReceived(self, chunk: bytes) -> None:
        self.lastReceived = self.factory.clock.seconds()
        if not self._isReady and len(self._firstBytes) < 16:
            self._firstBytes += chunk[:16]  # to say what the peer was, if not PB
        self._feed(chunk)

    def _feed(self, chunk: bytes) -> None:
        """
        Decode C{chunk} (and what was kept while reading was paused), then
        charge what the message under way holds to the shared pool and note
        when it began (see L{aurora._heartbeat.Watchdog}'s message timeout).
        """
        decoder = self._decoder
        outermost = self._cork.hold()
        try:
            if chunk or not decoder.paused:
                decoder.feed(chunk)
            if self._pool is not None and not decoder.stopped:
                refusal = self._pool.charge(self, decoder.messageBytes,
                                            decoder.messageItems)
                if refusal is not None:
                    self._pool.release(self)
                    decoder.refuse(refusal)
        except Exception as e:
            # Malformed input (bad framing, an invalid type byte).  Stock
            # Twisted logs a traceback per occurrence and drops the
            # connection; a hostile peer should not fill the log.
            self._refuse(f"a malformed message ({type(e).__name__}: {_safeText(e, 200)})")
            return
        finally:
            if outermost:
                self._cork.flush()
        # While paused, what is kept may be whole messages not yet read.
        if decoder.messageBytes and not decoder.stopped and not decoder.paused:
            if self.messageSince is None:
                self.messageSince = self.factory.clock.seconds()
        else:
            self.messageSince = None

    def _refuse(self, what: str) -> None:
        """Drop the peer for C{what} it sent: one warning, no traceback."""
        if self.disconnected:
            return
        self.peerLog.warn(("refused", id(self)),
                          "{peer} sent {what}; dropping the connection",
                          peer=self.peer, what=what)
        self._decoder.reset()
        self._decoder.stopped = True
        if self._pool is not None:
            self._pool.release(self)
        self._cork.discard(self)  # no answers to a refused peer
        self.transport.abortConnection()

    def _onRefused(self, why: _banana.Refusal, head: list[Any]) -> bool:
        """
        A message crossed a budget while being decoded: skip the rest and
        answer it with L{LimitExceeded} if that can be done without building
        it (a call or an answer, after login, within the byte budget); else
        drop the peer.
        """
        setting = _SETTING.get(why.kind, why.kind)
        if not self.loggedIn:
            self._refuse(f"{why} before logging in (the limit before login)")
            return False
        if why.kind == "bytes" or not _answerable(head):
            self._refuse(f"{why} ({setting})")
            return False
        self._refusal = why
        return True

    def _onSkipped(self, head: list[Any]) -> None:
        why, self._refusal = self._refusal, None
        if self._pool is not None:
            self._pool.release(self)
        if why is None:
            return
        setting = _SETTING.get(why.kind, why.kind)
        error = LimitExceeded(
            f"refused {why}: over this connection's {setting}; send it in pieces",
            limit=why.limit)
        kind, requestID = head[0], head[1]
        if kind in (b"message", b"cachemessage"):
            if head[4]:
                self.writeError(error, requestID)
        else:
            d = self.waitingForAnswers.pop(requestID, None)
            if d is not None:
                d.errback(Failure(error))
        self.peerLog.warn(("skipped", id(self)),
                          "{peer} sent {why}; answered with LimitExceeded",
                          peer=self.peer, why=str(why))

    def expressionReceived(self, sexp: Any) -> None:
        # Stock PB answers an unknown command by sending it back, and logs
        # a peer's didNotUnderstand whole: both are the peer's to inflate.
        if type(sexp) is not list or not sexp or sexp[0] not in _COMMANDS:
            what = sexp[0] if type(sexp) is list and sexp else type(sexp).__name__
            raise pb.ProtocolError(f"not a PB command: {_safeText(repr(what), 40)}")
        getattr(self, _COMMANDS[sexp[0]])(*sexp[1:])

    def proto_didNotUnderstand(self, command: Any) -> None:
        raise pb.ProtocolError(
            f"the peer did not understand {_safeText(repr(command), 40)}")

    def _gotExpression(self, sexp: Any) -> None:
        try:
            self.callExpressionReceived(sexp)
        except _PEER_FAULTS as e:
            self._badInput(sexp, e)
        except Exception:
            # Not what the peer sent but what this side did with it: ours,
            # logged with its traceback (rate-limited); the peer stays.
            failure = Failure()
            self.factory.errorLog.failure(
                ("handling", failure.type), "handling a message from {peer} failed",
                failure, peer=self.peer)
        if self.disconnected:
            self._decoder.stopped = True

    def _badInput(self, sexp: Any, e: Exception) -> None:
        """
        A well-framed message PB cannot act on (unknown or unhashable ids,
        wrong arity, a non-list): drop a peer not logged in; otherwise one
        log line per interval, no traceback, and the connection stays.
        """
        what = f"{type(e).__name__}: {_safeText(e, 200)}"
        if not self.loggedIn:
            self._refuse(f"a malformed message ({what})")
            return
        self._warnPeer("a malformed message", what)

    def _warnPeer(self, what: str, detail: str) -> None:
        self.peerLog.warn(("bad input", id(self)),
                          "{peer} sent {what} ({detail}); ignored",
                          peer=self.peer, what=what, detail=detail)

    # -- calls from the peer: validated, counted, answered

    def receiveMessage(self, findObjMethod: Callable[[Any], Any], requestID: Any,
                       objectID: Any, message: Any, answerRequired: Any,
                       netArgs: Any, netKw: Any) -> None:
        # Stock PB logs a traceback for fields it cannot use (an unhashable
        # id, a message name that is not UTF-8) and keeps going; here each
        # is one rate-limited line, and a call is answered when it can be.
        if type(requestID) is not int or type(answerRequired) is not int or \
                not isinstance(objectID, (bytes, int)) or \
                not isinstance(message, bytes):
            raise TypeError("a call with malformed fields")
        try:
            obj = findObjMethod(objectID)
        except KeyError:
            obj = None
        if obj is None:
            if objectID != PROBE_ID:
                self._warnPeer("a call to an object this side does not have",
                               f"id {objectID!r:.40}")
            if answerRequired:
                self.writeError(pb.CopyableFailure(pb.Error("Invalid Object ID")),
                                requestID)
            return
        try:
            name = message.decode("utf-8")
            self.answering = bool(answerRequired)
            result = obj.remoteMessageReceived(self, name, netArgs, netKw)
        except pb.Error as e:
            if answerRequired:
                self.writeError(e if isinstance(e, jelly.Jellyable)
                                else pb.CopyableFailure(e), requestID)
            return
        except Exception:
            # Not the peer's doing: aurora's own code failed.  Logged (rate-
            # limited) with its traceback; the caller gets a bare error.
            failure = Failure()
            self.factory.errorLog.failure(
                ("dispatch", failure.type), "dispatching a call from {peer} failed",
                failure, peer=self.peer)
            if answerRequired:
                self.writeError(pb.CopyableFailure(pb.Error(
                    f"the call failed on the far side ({qual(type(failure.value))})")),
                    requestID)
            return
        if not answerRequired:
            if isinstance(result, defer.Deferred):
                result.addErrback(self._unanswered)
            return
        if not isinstance(result, defer.Deferred):
            self.writeAnswer(result, requestID)
            return
        result.addCallbacks(self.writeAnswer, self.writeFailureOrError,
                            callbackArgs=(requestID,), errbackArgs=(requestID,))
        if not result.called:
            self._callsInProgress += 1
            if self._callsInProgress >= self.limits.maxPendingCalls:
                self.pauseReading("calls")
            result.addBoth(self._callDone)

    def _unanswered(self, failure: Failure) -> None:
        # A call nobody waits for failed: logged (rate-limited), not left
        # to Twisted's "Unhandled error in Deferred".
        self.factory.errorLog.failure(
            ("unanswered", failure.type), "a call from {peer} that wants no answer "
            "failed", failure, peer=self.peer)

    def _callDone(self, result: Any) -> None:
        self._callsInProgress -= 1
        if self._callsInProgress < self.limits.maxPendingCalls:
            self.resumeReading("calls")

    # -- backpressure: what this side does not read, the peer cannot send

    @property
    def readingPaused(self) -> bool:
        """Whether this side has stopped reading the peer (see L{pauseReading})."""
        return bool(self._pauses)

    def pauseReading(self, why: str) -> None:
        """
        Stop reading the peer until L{resumeReading} with the same C{why}
        (and every other reason given) is called: TCP then stops the peer.
        """
        if not self._pauses and not self.disconnected:
            self._decoder.paused = True
            if self._socket is not None:
                self._socket.stopReading()
        self._pauses.add(why)

    def resumeReading(self, why: str) -> None:
        if why not in self._pauses:
            return
        self._pauses.discard(why)
        if self._pauses or self.disconnected:
            return
        # Silence while this side was not reading is not the peer's.
        self.lastReceived = self.factory.clock.seconds()
        if self._socket is not None:
            self._socket.startReading()
        self._decoder.paused = False
        self._feed(b"")

    def hasUnread(self) -> bool:
        """Whether bytes from the peer wait in the socket, not yet read."""
        if self._socket is None or self.readingPaused:
            return False
        try:
            return bool(self._socket.socket.recv(1, _socket.MSG_PEEK | _socket.MSG_DONTWAIT))
        except OSError:
            return False

    def probe(self) -> None:
        """
        Provoke an answer from the peer: a call to an object no peer has,
        which any PB peer (aurora or stock) answers with an error.
        """
        requestID = self.newRequestID()
        d: defer.Deferred = defer.Deferred()
        d.addErrback(lambda f: None)
        self.waitingForAnswers[requestID] = d
        self.sendCall(b"message", requestID, PROBE_ID, b"ping", 1,
                      [b"tuple"], [b"dictionary"])

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
            return defer.fail(pb.PBConnectionLost(
                f"connection lost before it was ready: {self._whyLost}"))
        d: defer.Deferred = defer.Deferred()
        self._readyWaiters.append(d)
        return d

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.lostReason = reason
        if self._watch is not None:
            self._watch.stop()
        if self._pool is not None:
            self._pool.release(self)
        self._decoder.reset()
        self._decoder.stopped = True
        if self.flow is not None:
            # Not every transport tells its producer (TLS, lost mid-handshake,
            # may not): the lag timer must not outlive the connection.
            self.flow.stopProducing()
        waiting, self._readyWaiters = self._readyWaiters, []
        if not self._isReady and self._whyLost is None:
            self._whyLost = _whyNotReady(reason, self._firstBytes)
        super().connectionLost(reason)
        for d in waiting:
            d.errback(pb.PBConnectionLost(
                f"connection lost before it was ready: {self._whyLost}"))

    def watch(self, timeout: float, interval: float | None = None,
              ping: Callable[[], Any] | None = None, *, quiet: bool = False,
              messageTimeout: float | None = None) -> None:
        """
        Abort the connection once nothing has arrived for C{timeout} seconds;
        with C{ping}, call it every C{interval} seconds to provoke an answer
        (with C{quiet}, only once the peer has been silent that long).  See
        L{aurora._heartbeat.Watchdog}.
        """
        if self._watch is not None:
            self._watch.stop()
        self._watch = Watchdog(self, self.factory.clock, timeout, interval, ping,
                                quiet=quiet, messageTimeout=messageTimeout)
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
        outer = self._txn
        txn: list[tuple[str, Any, Any, bool]] = []
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

    def newRequestID(self) -> int:
        """The id of the next call this side sends (1, 2, ...: as stock PB)."""
        self.currentRequestID += 1
        return self.currentRequestID

    def sendMessage(self, prefix: bytes, perspective: Any, objectID: Any,
                    message: bytes, args: Any, kw: dict[str, Any]) -> Any:
        """
        Send a call of C{message} on the peer's object C{objectID} (a
        C{prefix + b"message"}: C{b"cache"} for a model's mirror); a Deferred
        of its answer, or None when C{kw} says C{pbanswer=False}.

        A call that cannot be sent fails its Deferred (never leaves it
        waiting) and takes back the references and model observations its
        arguments registered: the peer never learns of them.
        """
        answerRequired = kw.pop("pbanswer", 1)
        if self.disconnected:
            raise pb.DeadReferenceError("Calling Stale Broker")
        txn: list[tuple[str, Any, Any, bool]] = []
        self._txn = txn
        try:
            try:
                netArgs = self.serialize(args, perspective=perspective, method=message)
                netKw = self.serialize(kw, perspective=perspective, method=message)
            except Exception:
                self._undo(txn)  # the keywords failed after the arguments went in
                return defer.fail()
            requestID = self.newRequestID()
            answer: defer.Deferred | None = None
            if answerRequired:
                answer = defer.Deferred()
                self.waitingForAnswers[requestID] = answer
            try:
                self.sendCall(prefix + b"message", requestID, objectID, message,
                              answerRequired, netArgs, netKw)
            except banana.BananaError as e:
                self.waitingForAnswers.pop(requestID, None)
                self._undo(txn)
                return defer.fail(_unencodable(e))
            return answer
        finally:
            self._txn = None

    def writeAnswer(self, netResult: Any, requestID: int) -> None:
        try:
            super().writeAnswer(netResult, requestID)
        except banana.BananaError as e:
            # Stock PB lets this escape dataReceived and drops the connection.
            self._undo(self._lastTxn)
            self.writeError(_unencodable(e), requestID)

    def unserialize(self, sexp: Any, perspective: Any = None) -> Any:
        try:
            return _plain.unjellyPlain(sexp)
        except _plain.NotPlain:
            pass
        value = super().unserialize(sexp, perspective)
        # jelly's references let a few bytes stand for one string many times
        # over: sent on again (an echo), each copy is written out in full.
        limit = self.limits.maxMessageBytes
        if _expandedSize(value, limit) > limit:
            raise LimitExceeded(
                "refused a message whose values, with jelly's references expanded, "
                f"come to over {limit} bytes (maxMessageBytes)", limit=limit)
        return value

    def proto_answer(self, requestID: int, netResult: Any) -> None:
        d = self._waiting(requestID)
        if d is None:
            return
        try:
            result = self.unserialize(netResult)
        except Exception as e:
            d.errback(Failure(_unreadable(e)))
        else:
            d.callback(result)

    def proto_error(self, requestID: int, fail: Any) -> None:
        d = self._waiting(requestID)
        if d is None:
            return
        security = self.security
        self.security = security.forErrors()
        try:
            error = self.unserialize(fail)
        except Exception as e:
            error = _unreadable(e)
        finally:
            self.security = security
        d.errback(error if isinstance(error, Failure) else Failure(error))

    def _waiting(self, requestID: Any) -> defer.Deferred | None:
        try:
            d = self.waitingForAnswers.pop(requestID, None)
        except TypeError:  # unhashable
            d = None
        if d is None:
            self._warnPeer("an answer to no call", f"request id {requestID!r:.40}")
        return d

    def remoteForName(self, name: str | bytes) -> Reference:
        """The peer's object published under C{name} (its root: C{"root"})."""
        if isinstance(name, str):
            name = name.encode("utf-8")
        return Reference(self, name, counted=False)

    def receiveRemote(self, luid: Any) -> Reference:
        """A stock PB reference (C{[b"remote", luid]}) from the peer."""
        return Reference(self, luid)

    def receiveReference(self, luid: int, names: Any, descriptions: Any) -> Any:
        """An incoming manager reference: wrap it for the application."""
        ref = Reference(self, luid)
        if not isinstance(names, (list, tuple)):
            names = ()
        names = tuple(n.decode("utf-8") for n in names if isinstance(n, bytes))
        if not isinstance(descriptions, list):
            descriptions = []
        return self.factory.wrapReference(ref, names, self.factory, descriptions)


class ClientFactory(pb.PBClientFactory):
    """
    A PB client factory building aurora brokers; also the settings every
    wrapper on its connections uses (deadline, clock, result tracker).  Its
    brokers have no access context: a client's server may use whatever it
    was sent.

    @param cork: what batches its connections' writes (by default, a
        L{Cork} of its own).
    """

    protocol = Broker
    pool = None  # a client's one connection needs no shared budget
    countPeerCaches = False
    loggedIn = True  # what the server sends is held to the full limits

    def __init__(self, wrapReference: Callable[..., Any], *,
                 callTimeout: float | None, clock: Any, tracker: Any = None,
                 limits: Limits | None = None, cork: Cork | None = None,
                 types: TypeTable | None = None, wrappers: Any = None) -> None:
        super().__init__(security=Security(types if types is not None else TypeTable()))
        # Wrapper classes for this client's connections, before the process's
        # (see aurora._wrapper.wrapperTable): interface name -> (interface, class).
        self.wrappers: dict[str, Any] = dict(wrappers or {})
        self.wrapReference = wrapReference
        self.callTimeout = callTimeout
        self.clock = clock
        self.cork = cork if cork is not None else Cork()
        self.tracker = tracker
        self.limits = limits if limits is not None else Limits()
        self.flowLimits: dict[str, Any] = {}
        self.peerLog = LogLimiter(Logger(namespace="aurora.wire"), clock)
        self.errorLog = LogLimiter(Logger(namespace="aurora.wire"), clock)
        # Interfaces this client's server described (see remote.learnInterface).
        self.learned: dict[str, Any] = {}


class ServerFactory(pb.PBServerFactory):
    """
    A PB server factory building aurora brokers; settings as L{ClientFactory}.

    Its connections start with C{loginLimits} and get C{limits} (or their
    identity's grant) at login; C{pool} bounds what all of them decode at
    once.  C{peerLog} and C{errorLog} keep what peers cause from flooding
    the log.

    @param access: makes each connection's L{IAccess}, what its peer may
        use (None: everything).
    @param cork: as L{ClientFactory}'s.
    """

    protocol = Broker
    tracker = None  # what a server receives is not re-fetched on reconnect
    learned = None  # a server never believes its peers' interface descriptions
    loggedIn = False
    countPeerCaches = True
    # Seconds of silence after which a connection is probed; None: never.
    idleTimeout: float | None = None
    # Whether one more connection, from an address, may be served.
    admit: Callable[[Any], bool] = staticmethod(lambda addr: True)

    def buildProtocol(self, addr: Any) -> Any:
        if not self.admit(addr):
            return None  # Twisted closes the connection at once
        # As PB's own, with the connection's access context from the start.
        access = self.access() if self.access is not None else None
        proto = self.protocol(isClient=False, security=self.security, access=access)
        proto.factory = self
        proto.setNameForLocal("root", self.root.rootObject(proto))
        return proto

    def __init__(self, root: Any, wrapReference: Callable[..., Any], *,
                 callTimeout: float | None, clock: Any,
                 flowLimits: dict[str, Any] | None = None,
                 limits: Limits | None = None, loginLimits: Limits | None = None,
                 pool: DecodingPool | None = None, errorDetail: str = "type",
                 access: Callable[[], IAccess] | None = None,
                 cork: Cork | None = None, types: TypeTable | None = None) -> None:
        super().__init__(root, security=Security(types if types is not None else TypeTable()))
        self.wrapReference = wrapReference
        self.callTimeout = callTimeout
        self.clock = clock
        self.access = access
        self.cork = cork if cork is not None else Cork()
        self.flowLimits = flowLimits or {}
        self.loggedInLimits = limits if limits is not None else Limits()
        self.limits = loginLimits if loginLimits is not None else Limits.beforeLogin()
        self.pool = pool if pool is not None else DecodingPool()
        self.errorDetail = errorDetail
        log = Logger(namespace="aurora.server")
        self.peerLog = LogLimiter(log, clock)
        self.errorLog = LogLimiter(log, clock)
