"""
Managers: objects other processes call through a reference.

A L{Manager} is sent as a reference naming the zope interfaces the peer may
use (with their descriptions, once per connection); a call that arrives for
it is served here: the method looked up among those interfaces, the
arguments unserialized and checked against its signature, and what
application code raised mapped to the L{RemoteError} the caller gets, its
traceback logged on this side under the same error id.
"""

from __future__ import annotations

import secrets
import difflib
import weakref
from types import CoroutineType
from typing import Any, cast

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.reflect import qual
from twisted.spread import pb
from twisted.persisted.crefutil import NotKnown

from aurora import _schema
from aurora._quiet import LogLimiter
from aurora._plain import NotPlain, unjellyPlain
from aurora._jelly import REF_ATOM
from aurora.errors import (
    Error,
    NoSuchMethod,
    RemoteError,
    SerializationError,
    UnknownInterface,
    _safeRepr,
    _safeText,
)

# The namespace these lines were always logged under (aurora.remoteable).
_log = Logger(namespace="aurora.remoteable")


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

    # Declared, as every Error is, under the name it has always had.
    typeName = "aurora.remoteable._Hidden"


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
