"""
Every exception aurora raises, each a subclass of L{Error}.

L{Error} subclasses travel by value: raised in a manager method, they reach
the caller as the same class, carrying their declared C{fields}.  Applications
subclass L{Error} for their own expected failures.  Each class also derives
from the builtin or Twisted exception that code written without aurora would
catch (L{UnknownInterface} is a C{LookupError}, L{ConnectionLost} is a
C{pb.DeadReferenceError}, ...).
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer
from twisted.spread import pb

from aurora._types import Declared


class Error(Declared, pb.Error, pb.Copyable):
    """
    Base class of aurora's errors and of application errors that should
    reach the caller as themselves.

    C{Error("text", field=value)}: the message and any declared fields.
    """

    fields = ("message",)
    _kind = "error"

    def __init__(self, message: str = "", **fields: Any) -> None:
        super().__init__(message)
        unknown = set(fields) - set(self._fields)
        if unknown:
            raise TypeError(
                f"{type(self).__name__} has no field(s) {sorted(unknown)}; "
                f"declared: {self._fields}"
            )
        self.message = message
        for name in self._fields:
            if name != "message":
                setattr(self, name, fields.get(name))

    def _setState(self, state: Any) -> None:
        super()._setState(state)
        self.args = (self.message or "",)

    def __str__(self) -> str:
        return self.message or ""

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and other._state() == self._state()

    __hash__ = Exception.__hash__


class RegistrationError(Error):
    """A manager that does not provide the interface, or a duplicate."""


class UnknownInterface(Error, LookupError):
    """No manager is registered (or offered to you) under this interface."""

    fields = ("interface",)


class NoSuchMethod(Error, AttributeError):
    """The method is not part of the interface the reference was got under."""

    fields = ("interface", "method")


class BadArguments(Error, TypeError):
    """The arguments do not fit the interface's declared signature."""

    fields = ("interface", "method")


class RemoteError(Error):
    """
    An exception that is not an L{Error} was raised on the far side.

    C{remoteType} is its dotted class name, as a C{str}.  No traceback
    travels; the server logs it.
    """

    fields = ("remoteType",)


class SerializationError(Error, TypeError):
    """A value that cannot travel: an undeclared class, an Enum, ..."""


class LimitExceeded(Error, ValueError):
    """A message over a wire limit (PB's 640 KB per string or list, ...)."""

    fields = ("limit",)


class Timeout(Error, defer.TimeoutError):
    """
    No answer within the call's deadline.  The outcome is unknown: the
    server may still complete the call (PB cannot cancel it).
    """

    fields = ("seconds",)


class ConnectionLost(Error, pb.DeadReferenceError, pb.PBConnectionLost):
    """
    The connection the call needed is gone (or went during the call).  The
    outcome of a call in flight is unknown.
    """


class ConnectionFailed(Error, ConnectionError):
    """No first connection could be made in time."""

    fields = ("endpoint",)


class LoginFailed(Error):
    """The server refused the credentials (or their absence, or plain TCP)."""


class IncompatibleVersion(Error):
    """The peer speaks another aurora protocol version."""

    fields = ("local", "remote")


class ReadOnlyMirror(Error, AttributeError):
    """A model mirror's fields change only at the origin."""


class StaleReference(Error):
    """
    A wrapper or model mirror that cannot be brought back after a reconnect:
    the call that produced it is marked not to be replayed, or the replayed
    result no longer contains a match for it.
    """


class OpaqueError(Error, declare=False):
    """
    An application error whose class this process (a relay) never imported:
    it keeps the type name and fields and is raised onward unchanged.
    """
