"""
L{Model}: observable state, and the mirrors of it other processes hold.

The origin side encodes an update once for all its observers and hands held
ones to flow control (L{aurora._flow.Flow}); the mirror side is a
L{Subscription} per model and connection, which stands in for PB's
RemoteCache, and L{OpaqueModel}, what a relay holds for a Model type it never
imported.
"""

from __future__ import annotations

import weakref
from typing import Any, Callable

from twisted.logger import Logger
from twisted.spread import pb
from zope.interface import implementer

from aurora import signals
from aurora._manager import _text, _unserializeCall
from aurora._broker import Observer
from aurora._seams import IUpdateSource
from aurora._types import Declared
from aurora._jelly import sharedUpdate
from aurora.errors import NoSuchMethod, ReadOnlyMirror, _safeRepr

# The namespace these lines were always logged under (aurora.remoteable).
_log = Logger(namespace="aurora.remoteable")


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
    # The type name it has always been declared and advertised under.
    typeName = "aurora.remoteable.Model"
    _kind = "model"
    keyField: str | None = None
    """A field that identifies the model among others in a list, for resync."""

    def __init__(self, **fields: Any) -> None:
        self._checkFields(fields)
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
        broker = jellier.invoker
        if broker is None:
            return super().jellyFor(jellier)
        # As PB's Cacheable: the first time on a connection, the type, the
        # id the peer will mirror it by and the state (the peer now
        # observes it); after that only the id, one more receipt.
        luid = broker.cachedRemotelyAs(self, 1)
        if luid is not None:
            return [b"cached", luid]
        luid = broker.cacheRemotely(self)
        state = self.getStateToCacheAndObserveFor(None, Observer(broker, self))
        sexp = jellier.prepare(self)
        sexp.extend([self.getTypeToCopy(), luid, jellier.jelly(state)])
        return jellier.preserve(self, sexp)

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


class Subscription:
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
        """The face, when the origin sends again a model this side mirrors."""
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
