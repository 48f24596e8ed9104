"""
The three kinds of object that travel: L{Manager} by reference, L{Copyable}
by value, L{Model} as a live mirror.

Write each class once: aurora derives what goes over the wire from the zope
interfaces a manager implements and the C{fields} a Copyable or Model
declares.  There is no C{remote_*} boilerplate and no hand-written mirror
class.
"""

from __future__ import annotations

import secrets
import difflib
import weakref
from types import CoroutineType
from typing import Any, Callable, cast

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.reflect import qual
from twisted.spread import pb
from twisted.persisted.crefutil import NotKnown
from zope.interface import implementer

from aurora import _schema, signals
from aurora._quiet import LogLimiter
from aurora._types import Declared
from aurora._pbcompat import CachedLocally
from aurora._seams import IUpdateSource
from aurora._plain import NotPlain, unjellyPlain
from aurora._wire import REF_ATOM, sharedUpdate
from aurora.errors import (
    Error,
    NoSuchMethod,
    ReadOnlyMirror,
    RemoteError,
    SerializationError,
    UnknownInterface,
    _safeRepr,
    _safeText,
)

_log = Logger()


def _text(name: Any) -> str:
    return name.decode("utf-8") if isinstance(name, bytes) else name


def _unserializeCall(broker: Any, args: Any, kw: Any) -> tuple[tuple, dict]:
    try:
        args, kw = unjellyPlain(args), unjellyPlain(kw)
    except NotPlain:
        pass  # the full unjelly, checked below
    else:
        if type(args) in (tuple, list) and type(kw) is dict:
            return tuple(args), {_text(k): v for k, v in kw.items()}
        raise SerializationError("malformed call: arguments are not a list and a dict")
    try:
        args = broker.unserialize(args)
        kw = broker.unserialize(kw)
    except Exception as e:
        if isinstance(e, Error):
            raise
        raise SerializationError(
            f"the arguments could not be accepted ({type(e).__name__}: "
            f"{_safeText(e)}): an undeclared type, a class this side has not "
            "imported, or a reference to an object it does not know"
        ) from None
    if not isinstance(args, (list, tuple)) or not isinstance(kw, dict):
        raise SerializationError("malformed call: arguments are not a list and a dict")
    leftover = _unresolved((args, kw))
    if leftover is not None:
        raise SerializationError(
            f"malformed call: the arguments hold a {qual(type(leftover))}, which "
            "no declared type produces (a dangling jelly reference?)")
    return tuple(args), {_text(k): v for k, v in kw.items()}


def _unresolved(value: Any) -> Any:
    """A jelly placeholder left in C{value} by a malformed message, if any."""
    stack, seen = [value], 0
    while stack and seen < 100_000:
        item = stack.pop()
        seen += 1
        if isinstance(item, (NotKnown, Failure)):
            return item
        if isinstance(item, (list, tuple, set, frozenset)):
            stack.extend(item)
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
    return None


# For a broker whose factory has no errorLog (not one of aurora's).
_fallbackErrorLog: LogLimiter | None = None
# Per limiter: (where, type) -> the error id of the last traceback it logged.
_loggedIds: weakref.WeakKeyDictionary[LogLimiter, dict[Any, str]] = (
    weakref.WeakKeyDictionary())


def _errorLog(broker: Any) -> LogLimiter:
    """
    Where a connection logs what application code raised: its factory's
    C{errorLog} (one per server or client, timed by its clock), else one
    limiter for this process.
    """
    global _fallbackErrorLog
    limiter = getattr(getattr(broker, "factory", None), "errorLog", None)
    if limiter is not None:
        return limiter
    if _fallbackErrorLog is None:
        from twisted.internet import reactor

        _fallbackErrorLog = LogLimiter(_log, reactor)
    return _fallbackErrorLog


def _toRemoteError(failure: Failure, where: str, broker: Any) -> Failure:
    """
    Keep aurora errors; anything else (an exception in application code)
    travels as L{RemoteError}: its type, C{where} it was raised and an error
    id, but not its message unless the server's factory says
    C{errorDetail = "message"}.

    The traceback is logged here with the error id, at most once per
    interval for each C{where} and exception type (the factory's
    C{errorLog}).  A caller whose exception is left out of the log gets the
    id of the last traceback logged for that C{where} and type, so that
    every id a caller sees is in the log; the next line logged for them
    counts those left out ("and N more like it").
    """
    if isinstance(failure.value, Error):
        return failure
    remoteType = qual(type(failure.value))
    log = _errorLog(broker)
    key = ("aurora.remoteable", where, remoteType)
    errorId = secrets.token_hex(4)
    ids = _loggedIds.get(log)
    if ids is None:
        ids = _loggedIds[log] = {}
    if log.failure(key, "{where} raised {remoteType} (error id {errorId}); the "
                   "caller gets RemoteError", failure, where=where,
                   remoteType=remoteType, errorId=errorId):
        if key not in ids and len(ids) >= log.maxKeys:
            ids.clear()
        ids[key] = errorId
    else:
        errorId = ids.get(key, errorId)
    text = f"{remoteType} in {where}"
    if getattr(getattr(broker, "factory", None), "errorDetail", "type") == "message":
        detail = _safeText(failure.value)
        if detail:
            text += f": {detail}"
    return Failure(RemoteError(f"{text} (error id {errorId})",
                               remoteType=remoteType, errorId=errorId))


def _noSuchMethod(name: str, exposed: dict[str, Any], mayUse: Any) -> NoSuchMethod:
    usable = {m: i.__identifier__ for m, (i, _) in exposed.items()
              if mayUse is None or mayUse(i.__identifier__)}
    offered = sorted(set(usable.values()))
    near = difflib.get_close_matches(name, list(usable), n=1)
    hint = f"; did you mean {near[0]!r}?" if near else ""
    return NoSuchMethod(
        f"{', '.join(offered) or 'this manager'} has no method {_safeRepr(name)}{hint}",
        interface=", ".join(offered), method=name)


class _Hidden(UnknownInterface):
    """A manager with no interface the peer may use was about to be sent."""


def _hidden(iface: Any, name: str) -> UnknownInterface:
    # Names the method, never the hidden interface.
    return UnknownInterface(
        f"{iface.__identifier__}.{name} returned a manager that is not offered "
        "to you", interface="")


class Manager(pb.Referenceable):
    """
    Base class of managers: objects other processes call through a reference.

    The methods of the zope interfaces the class implements are callable
    remotely, and nothing else.  Arguments are checked against the interface
    signature before the method runs.  A method may return a value, a
    Deferred, or be C{async def}.

    An L{Error} a method raises reaches the caller as itself; any other
    exception as L{RemoteError} with its type and an error id, its traceback
    logged on this side under the same id (see L{RemoteError}).
    """

    def remoteMessageReceived(self, broker: Any, message: Any, args: Any,
                              kw: Any) -> Any:
        name = _text(message)
        exposed = self._exposed()
        entry = exposed.get(name)
        mayUse = getattr(broker, "mayUse", None)
        if entry is None or (mayUse is not None and not mayUse(entry[0].__identifier__)):
            # What this peer may not use does not exist for it: the message
            # names only what it may use, never the class behind it.
            raise _noSuchMethod(name, exposed, mayUse)
        iface, method = entry
        args, kw = _unserializeCall(broker, args, kw)
        _schema.checkArguments(iface, method, args, kw)
        try:
            result = getattr(self, name)(*args, **kw)
            # A plain value is answered at once, as stock PB does: a Deferred
            # per call costs more than the rest of the dispatch.
            if isinstance(result, defer.Deferred):
                d = result
            elif isinstance(result, Failure):
                d = defer.fail(result)
            elif isinstance(result, CoroutineType):
                d = defer.Deferred.fromCoroutine(result)
            elif not getattr(broker, "answering", True):
                return None  # nobody waits for it: nothing to serialize
            else:
                return broker.serialize(result, self.perspective)
        except _Hidden:
            raise _hidden(iface, name) from None
        except Error:
            raise
        except Exception:
            # Anything else PB would log with its traceback on every call
            # and send on with its message.
            raise cast(Exception, _toRemoteError(
                Failure(), f"{iface.__identifier__}.{name}", broker).value) from None
        where = f"{iface.__identifier__}.{name}"
        d.addErrback(_toRemoteError, where, broker)
        if not getattr(broker, "answering", True):
            # Logged by _toRemoteError if unexpected; then nobody's concern.
            return d.addCallbacks(lambda _: None, lambda f: None)
        d.addCallback(broker.serialize, self.perspective)
        d.addErrback(lambda f: f.trap(_Hidden) and Failure(_hidden(iface, name)))
        # What serializing the result raised (an application class's own
        # jelly code), likewise.
        d.addErrback(_toRemoteError, where, broker)
        return d

    def jellyFor(self, jellier: Any) -> Any:
        broker = jellier.invoker
        if broker is None:
            return super().jellyFor(jellier)
        ifaces = self._offered()
        mayUse = getattr(broker, "mayUse", None)
        if mayUse is not None:
            # Interfaces the peer may not use are not even named to it.
            ifaces = [i for i in ifaces if mayUse(i.__identifier__)]
            if not ifaces:
                raise _Hidden("a manager that is not offered to you", interface="")
        described = getattr(broker, "describedInterfaces", None)
        descriptions = []
        if described is not None:
            for iface in ifaces:
                if iface.__identifier__ not in described:
                    described.add(iface.__identifier__)
                    descriptions.append(_schema.describe(iface))
        return [
            REF_ATOM,
            broker.registerReference(self),
            # Plain bytes inside the atom: banana carries them without jelly.
            [i.__identifier__.encode("utf-8") for i in ifaces],
            jellier.jelly(descriptions),
        ]

    def _offered(self) -> list[Any]:
        return _schema.offeredInterfaces(self)

    def _exposed(self) -> dict[str, tuple[Any, Any]]:
        """The methods a peer may call, by name, with their interfaces."""
        return _schema.exposedMethods(self)

    def __repr__(self) -> str:
        # Without the default repr's address: managers are named in messages
        # ("cannot register ...", a reference that went stale).
        offered = ", ".join(i.__identifier__ for i in _schema.offeredInterfaces(self))
        return f"<{qual(type(self))} offering {offered or 'no interface'}>"


class Copyable(Declared, pb.Copyable):
    """
    A data object sent by value.

    Declare what travels in C{fields}; nothing else does.  The receiver gets
    an instance of the same class (built without calling C{__init__}), which
    can be sent onward again.  Fields the receiver does not declare are
    dropped; fields the sender did not send are None.
    """

    _kind = "copy"

    def __init__(self, **fields: Any) -> None:
        unknown = set(fields) - set(self._fields)
        if unknown:
            raise TypeError(
                f"{type(self).__name__}() got unknown field(s) {sorted(unknown)}; "
                f"declared fields: {self._fields}"
            )
        for name in self._fields:
            setattr(self, name, fields.get(name))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Copyable):
            return NotImplemented
        return other.typeName == self.typeName and other._state() == self._state()

    __hash__ = None  # type: ignore[assignment]  # mutable, compared by value

    def __repr__(self) -> str:
        inner = ", ".join(f"{k}={v!r}" for k, v in self._state().items())
        return f"{type(self).__name__}({inner})"


@implementer(IUpdateSource)
class Model(Declared, pb.Cacheable):
    """
    Observable state.

    Assigning a declared field sends L{aurora.signals.changed}
    (C{sender=model, name=, value=, old=}) when the value really changes.
    Returned from a manager method, a Model travels as a PB Cacheable: the
    caller gets a live, read-only mirror of the same class that sends the same
    signal with itself as sender.  A mirror can be sent onward and is then
    observed like the original.

    Order: on a change, the local C{changed} handlers run first, then the
    observers are sent the field's value as it stands after them.  So a
    handler may normalise a value (assign the field again) and every mirror
    still ends in the origin's final state.
    """

    _link: Subscription | None = None
    _kind = "model"
    keyField: str | None = None
    """A field that identifies the model among others in a list, for resync."""

    def __init__(self, **fields: Any) -> None:
        unknown = set(fields) - set(self._fields)
        if unknown:
            raise TypeError(
                f"{type(self).__name__}() got unknown field(s) {sorted(unknown)}; "
                f"declared fields: {self._fields}"
            )
        d = self.__dict__
        for name in self._fields:
            d[name] = fields.get(name)

    def __setattr__(self, name: str, value: Any) -> None:
        if name in self._fields:
            if self._link is not None:
                raise ReadOnlyMirror(
                    f"{type(self).__name__}.{name} is a mirror of a remote model; "
                    "change it through a manager method at its origin"
                )
            self._update(name, value)
        else:
            object.__setattr__(self, name, value)

    def _update(self, name: str, value: Any) -> None:
        d = self.__dict__
        old = d.get(name)
        if name in d and type(old) is type(value) and old == value:
            return
        d[name] = value
        # The rule: local handlers run first; then observers get the value as
        # it stands after them.  A handler that sets the field again (to
        # normalise it) has sent its own update already, and this one, now
        # stale, would arrive after it and leave every mirror behind.
        signals.send(signals.changed, self, name=name, value=value, old=old)
        if d.get(name) is not value:
            return
        observers = d.get("_observers")
        if not observers:
            return
        # Encoded once for every observer when it can be (stock PB jellies
        # and encodes the update again for each connection).
        shared = sharedUpdate(name, value)
        for broker, observer in list(observers.items()):
            flow = broker.flow
            if flow is not None and flow.paused:
                flow.hold(self, observer, name, value)
            elif shared is None:
                self.deliverUpdate(broker, observer, name, value)
            elif not broker.sendUpdate(self, shared):
                observers.pop(broker, None)

    def deliverUpdate(self, broker: Any, observer: Any, name: str, value: Any) -> None:
        """Send C{name = value} to one observer's mirror now (see L{aurora._flow.Flow})."""
        try:
            d = observer.callRemote("update", name, value, pbanswer=False)
        except pb.ProtocolError:  # gone, or no longer cached on that peer
            self.__dict__.get("_observers", {}).pop(broker, None)
            return
        if d is not None:  # only a failure to serialize returns a Deferred
            d.addErrback(
                lambda f: _log.failure(
                    "cannot send {model}.{name} to an observer", f,
                    model=type(self).__name__, name=name,
                )
            )

    # -- the Cacheable side: this object observed over a connection

    def getStateToCacheAndObserveFor(self, perspective: Any, observer: Any) -> Any:
        # Keyed by broker: PB compares observers with < when removing them
        # from a list (Twisted #9671).
        self.__dict__.setdefault("_observers", {})[observer.broker] = observer
        return self._state()

    def stoppedObserving(self, perspective: Any, observer: Any) -> None:
        self.__dict__.get("_observers", {}).pop(observer.broker, None)
        flow = getattr(observer.broker, "flow", None)
        if flow is not None:
            flow.forget(self)

    def jellyFor(self, jellier: Any) -> Any:
        error = self.__dict__.get("_error")
        if error is not None:
            raise error
        link = self._link
        if link is not None and link.broker is jellier.invoker:
            # A mirror going back to its origin arrives as the original.
            hold = getattr(link.broker, "holdUntilSent", None)
            if hold is not None:
                hold(self)
            return [b"lcache", link.luid]
        return super().jellyFor(jellier)

    # -- the mirror side: built when a Model arrives

    @classmethod
    def _fromWire(cls, unjellier: Any, sexp: list, face: Model | None = None) -> Any:
        broker = unjellier.invoker
        luid = sexp[1]
        if face is None:
            face = cls.__new__(cls)
        sub = Subscription(broker, luid, face)
        broker.cacheLocally(luid, sub)
        face._setState(unjellier.unjelly(sexp[2]))
        sub.state = face._state()
        face.__dict__["_link"] = sub
        return face

    def _rebind(self, other: Model) -> None:
        """
        Follow the subscription of C{other}, a fresh mirror of the same model
        on a new connection, and take its state, sending C{changed} for each
        field that differs.
        """
        sub = other.__dict__.pop("_link")
        sub.face = weakref.ref(self, sub._faceGone)
        old = self.__dict__.get("_link")
        if old is not None:
            old.detach()
        self.__dict__["_link"] = sub
        self.__dict__.pop("_error", None)
        for name in self._fields:
            self._update(name, other.__dict__.get(name))

    def _applyRemote(self, name: str, value: Any) -> None:
        if name in self._fields:
            self._update(name, value)

    def __repr__(self) -> str:
        inner = ", ".join(f"{k}={v!r}" for k, v in self._state().items())
        kind = " mirror" if self._link is not None else ""
        return f"<{type(self).__name__}{kind} {inner}>"


class OpaqueCopy(Copyable, declare=False):
    """
    A copy of a type this process (a relay) never imported: it keeps the type
    name and the advertised fields and is sent on unchanged.  Nothing of the
    application's is imported or instantiated.
    """

    def __repr__(self) -> str:
        inner = ", ".join(f"{k}={v!r}" for k, v in self._state().items())
        return f"<opaque {self.typeName}({inner})>"


class OpaqueModel(Model, declare=False):
    """
    A mirror of a Model type this process (a relay) never imported: it
    follows the origin and is observed downstream like any mirror.
    """

    @classmethod
    def _fromOpaque(cls, info: dict[str, Any], unjellier: Any, sexp: list) -> OpaqueModel:
        face = cls.__new__(cls)
        face.__dict__.update(info)
        return cls._fromWire(unjellier, sexp, face)

    def __repr__(self) -> str:
        inner = ", ".join(f"{k}={v!r}" for k, v in self._state().items())
        return f"<opaque {self.typeName} mirror {inner}>"


def _nothing() -> None:
    return None


class Subscription(CachedLocally):
    """
    The client end of one Model observed over one connection.

    PB delivers the origin's updates here; this object applies them to the
    one mirror the application holds (the I{face}).  It holds the face
    weakly: when the application drops the face, the origin is told to stop
    observing.  PB's own RemoteCache hands out a new "borg" object per
    receipt, which breaks pydispatcher's sender-by-identity matching; aurora
    hands out the same face every time.

    It also keeps the model's state, so that when the origin sends the model
    again just after the application dropped it (the "cached" was in flight
    when the decache left), a new face can be built from it.
    """

    def __init__(self, broker: Any, luid: int, face: Model) -> None:
        self.broker = broker
        self.luid = luid
        self.refs = 1  # the origin counts one reference per receipt
        self.released = False
        self.kind = type(face)
        # What an opaque mirror carries besides its fields.
        self.extra = {k: v for k, v in face.__dict__.items()
                      if k in ("typeName", "_fields", "keyField")}
        self.state: dict[str, Any] = {}
        # A weak reference to the face, or _nothing once detached.
        self.face: Callable[[], Model | None] = weakref.ref(face, self._faceGone)

    def receivedAgain(self) -> Any:
        # PB's "cached" unjellier asks for this when the origin sends a model
        # this connection mirrors already.
        face = self.face()
        if face is None:
            return self._revive()
        self.refs += 1
        return face

    def _revive(self) -> Model:
        face = self.kind.__new__(self.kind)
        face.__dict__.update(self.extra)
        face._setState(self.state)
        face.__dict__["_link"] = self
        self.face = weakref.ref(face, self._faceGone)
        self.refs, self.released = 1, False
        return face

    def remoteMessageReceived(self, broker: Any, message: Any, args: Any,
                              kw: Any) -> Any:
        if _text(message) != "update":
            raise NoSuchMethod(
                f"model mirrors accept only 'update', not {_safeRepr(message)}")
        (name, value), _ = _unserializeCall(broker, args, kw)
        name = _text(name)
        if name in self.state:
            self.state[name] = value
        face = self.face()
        if face is not None:
            face._applyRemote(name, value)
        return None

    def _faceGone(self, ref: Any) -> None:
        self.release()

    def detach(self) -> None:
        """Forget the face without telling the origin (its connection is gone)."""
        self.face = _nothing
        self.broker, self.refs, self.released = None, 0, True

    def release(self) -> None:
        """Tell the origin this connection no longer observes the model."""
        if self.released:
            return
        self.released = True
        broker, refs = self.broker, self.refs
        self.refs = 0
        if broker is not None and not broker.disconnected:
            for _ in range(refs):
                broker.decCacheRef(self.luid)
