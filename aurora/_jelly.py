"""
What may cross the wire, in either direction, and how a refusal is worded.

Every aurora connection has L{SECURITY} as its jelly taster: basic Python
types, PB's reference atoms (and aurora's own, L{REF_ATOM}) and the classes
declared in L{aurora._types}, nothing else.  A value that cannot be sent or
received becomes an L{aurora.errors.SerializationError} or
L{aurora.errors.LimitExceeded} the caller can read.  A model update made of
basic values is encoded once for all its observers (L{sharedUpdate}).
PB's reference atoms that name a connection's tables (C{local}, C{remote},
C{cached}) are read by that connection (see L{IConnection}); a stock PB
broker in the same process still gets PB's own readings.
"""

from __future__ import annotations

import datetime
import decimal
from typing import Any

from twisted.persisted.crefutil import NotKnown
from twisted.python.reflect import qual
from twisted.spread import banana, flavors, jelly, pb

from aurora import _banana, _plain, _types
from aurora._seams import IConnection
from aurora.errors import Error, LimitExceeded, SerializationError, _safeText

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
    A jelly taster that allows only basic values, the process's declared
    types and the opaque types of one endpoint's L{_types.TypeTable}
    (C{types}; None: declared types only).

    Twisted's own C{jelly.SecurityOptions} allows any dotted type name and
    defers to a module and class check; this one never resolves a name to a
    module or class at all (Twisted #6355).
    """

    def __init__(self, types: _types.TypeTable | None = None) -> None:
        super().__init__()
        self.types = types

    def isTypeAllowed(self, typeName: Any) -> bool:
        if isinstance(typeName, str):
            typeName = typeName.encode("utf-8")
        return (
            typeName in _RECEIVABLE
            or typeName in _SENDABLE
            or (self.types.accepts(typeName) if self.types is not None
                else _types.isDeclared(typeName))
        )

    def forErrors(self) -> Security:
        """The taster for an error answer: this one, and PB's own errors."""
        return _ErrorSecurity(self.types)

    def isModuleAllowed(self, moduleName: Any) -> bool:
        return False

    def isClassAllowed(self, klass: Any) -> bool:
        return False


SECURITY = Security()
"""The taster of an endpoint that accepts declared types only."""


class _ErrorSecurity(Security):
    """In an error answer only: PB's own errors (e.g. "Invalid Object ID")."""

    def isTypeAllowed(self, typeName: Any) -> bool:
        if typeName in (b"twisted.spread.pb.CopyableFailure",
                        "twisted.spread.pb.CopyableFailure"):
            return True
        return super().isTypeAllowed(typeName)




def _describeUnsendable(e: Exception) -> str:
    if isinstance(e, NotImplementedError) and "tzinfo" in str(e):
        return (
            "cannot send a timezone-aware datetime or time: send an epoch float "
            "or an ISO 8601 string"
        )
    return (
        f"cannot send this value ({_safeText(e)}): only basic types (str, bytes, int, "
        "float, bool, None, list, tuple, dict, set, Decimal, naive datetimes) "
        "and declared Copyable, Model, Error and Manager classes can travel"
    )


def _expandedSize(value: Any, limit: int) -> int:
    """
    The bytes of C{value}'s strings as jelly would write them again (each
    occurrence in full; each container once, as jelly sends the rest as
    references), counting no further than just past C{limit}.
    """
    size, stack, seen = 0, [value], set()
    while stack and size <= limit:
        item = stack.pop()
        t = type(item)
        if t is str or t is bytes:
            size += len(item)
        elif t is list or t is tuple or t is set or t is frozenset or t is dict:
            if id(item) in seen:
                continue
            seen.add(id(item))
            size += 8 * len(item)
            if t is dict:
                stack.extend(item.keys())
                stack.extend(item.values())
            else:
                stack.extend(item)
        elif isinstance(item, _types.Declared) and id(item) not in seen:
            # A copy's, model's or error's fields: what jelly would send of it
            # (not its other attributes, which may reach the whole process).
            seen.add(id(item))
            state = item.__dict__
            stack.extend(state.get(name) for name in item._fields)
        elif isinstance(item, NotKnown):
            # What jelly leaves for a reference to nothing it was sent: no
            # caller could make sense of it.
            raise SerializationError(
                "the peer sent a reference to a value it never sent (a dangling "
                "jelly reference)")
    return size


def _unencodable(e: Exception) -> Exception:
    if "too long" not in str(e):
        return SerializationError(f"cannot encode this message: {_safeText(e)}")
    return LimitExceeded(
        f"message too large: {_safeText(e)}; PB refuses any single string or list over "
        f"{banana.SIZE_LIMIT} bytes/items (twisted.spread.banana.SIZE_LIMIT): "
        "send it in pieces",
        limit=banana.SIZE_LIMIT,
    )


def _unreadable(e: Exception) -> Error:
    if isinstance(e, Error):
        return e  # already says what is wrong
    if isinstance(e, KeyError):
        what = f"a reference to an object this side does not know (id {_safeText(e, 40)})"
    elif isinstance(e, jelly.InsecureJelly):
        what = f"a type that is not declared here ({_safeText(e)})"
    else:
        what = f"{type(e).__name__}: {_safeText(e)}"
    return SerializationError(
        f"the peer sent a value this process cannot accept: {what}; a type "
        "must be declared (imported) on both sides")


def _receiveLocal(unjellier: Any, sexp: list) -> Any:
    """A reference sent back to this side: it must be one this side handed out."""
    invoker = unjellier.invoker
    obj = invoker.localObjectForID(sexp[1]) if len(sexp) == 2 else None
    # (A stock PB broker in this process shares jelly's registry: its
    # peer's references are its business.)
    if obj is None and IConnection.providedBy(invoker):
        raise SerializationError(
            f"a reference to an object this connection never handed out "
            f"(id {sexp[1:2]!r:.40})")
    return obj


_types.unjellyableRegistry[b"local"] = _receiveLocal


def _receiveRef(unjellier: Any, sexp: list) -> Any:
    if len(sexp) != 4 or not isinstance(sexp[1], int):
        raise jelly.InsecureJelly(f"malformed {REF_ATOM!r}")
    return unjellier.invoker.receiveReference(
        sexp[1], sexp[2], unjellier.unjelly(sexp[3]))


_types.unjellyableRegistry[REF_ATOM] = _receiveRef


def _receiveRemote(unjellier: Any, sexp: list) -> Any:
    """
    A stock PB reference (C{[b"remote", luid]}, from a stock PB server): on
    an aurora connection, the connection's own reference to it.
    """
    invoker = unjellier.invoker
    if not IConnection.providedBy(invoker):
        # A stock PB broker in this process: what PB itself would build.
        return pb.RemoteReference(invoker.unserializingPerspective, invoker, sexp[1], 1)
    return invoker.receiveRemote(sexp[1])


_types.unjellyableRegistry[b"remote"] = _receiveRemote


def _receiveCached(unjellier: Any, sexp: list) -> Any:
    """A model sent again (C{[b"cached", luid]}) that the connection mirrors."""
    invoker = unjellier.invoker
    if not IConnection.providedBy(invoker):
        return flavors.unjellyCached(unjellier, sexp)  # a stock PB broker's
    return invoker.receiveCached(sexp[1])


_types.unjellyableRegistry[b"cached"] = _receiveCached


# [b"cachemessage", requestID, luid, b"update", answerRequired, args, kw]:
# what a model's observer (aurora._broker.Observer) sends for
# callRemote("update", name, value, pbanswer=False), cut where the
# per-connection part ends.
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
