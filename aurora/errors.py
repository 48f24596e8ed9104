"""
Every exception aurora raises, each a subclass of L{Error}.

L{Error} subclasses travel by value: raised in a manager method, they reach
the caller as the same class, carrying their declared C{fields}.  Applications
subclass L{Error} for their own expected failures.  Each class also derives
from the builtin or Twisted exception that code written without aurora would
catch (L{UnknownInterface} is a C{LookupError}, L{ConnectionLost} is a
C{pb.DeadReferenceError}, ...).

An aurora message is one line, names the thing and keeps the cause, and never
holds a memory address (C{<app.Thing object at 0x7f...>} means nothing to the
other process and tells a peer about this one's heap): L{_safeRepr} and
L{_safeText} make a value or a foreign text fit for a message, and L{Error}
strips any address left in its message.
"""

from __future__ import annotations

import re
import reprlib
from typing import Any

from twisted.internet import defer
from twisted.python.reflect import qual
from twisted.spread import pb

from aurora._types import Declared

# What a default repr adds: " at 0x7f3a2c1d9e50" (not "at 0x1F", a byte offset).
_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]{6,}")

_MAX_TEXT = 1000
"""The most characters of a value or foreign text that go into a message."""

_repr = reprlib.Repr()
_repr.maxstring = _repr.maxother = 200
_repr.maxlevel = 3


def _withoutAddress(text: str) -> str:
    return _ADDRESS.sub("", text) if "0x" in text else text


def _safeText(text: Any, limit: int = _MAX_TEXT) -> str:
    """
    C{text} (an exception's message, a peer's words) fit for a message: one
    line, no control characters, no memory address, at most C{limit}
    characters.
    """
    if not isinstance(text, str):
        try:
            text = str(text)
        except Exception:
            text = f"<{qual(type(text))} that cannot be shown>"
    if len(text) > 4 * limit:
        text = text[:4 * limit]  # what could be shown, not a peer's megabytes
    if not text.isprintable():  # line breaks among others
        text = " ".join(filter(None, (line.strip() for line in text.splitlines())))
        # Terminal escapes and the like: a peer's words must not drive the
        # operator's terminal or forge log lines.
        text = "".join(c if c.isprintable() else "?" for c in text)
    text = _withoutAddress(text)
    if len(text) > limit:
        text = text[:limit - 3] + "..."
    return text


def _safeRepr(value: Any) -> str:
    """
    A repr of C{value} fit for a message: shortened (long strings and
    containers are cut), one line, and without a memory address (a default
    repr becomes C{<module.Class object>}).
    """
    try:
        text = _repr.repr(value)
    except Exception:
        text = f"<{qual(type(value))} object>"
    return _safeText(text)



class Error(Declared, pb.Error, pb.Copyable):
    """
    Base class of aurora's errors and of application errors that should
    reach the caller as themselves.

    C{Error("text", field=value)}: the message and any declared fields.  A
    memory address in the message (C{" at 0x7f..."}) is removed.
    """

    fields: tuple[str, ...] = ("message",)
    _kind = "error"

    def __init__(self, message: str = "", **fields: Any) -> None:
        if isinstance(message, str):
            message = _withoutAddress(message)
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

    def __hash__(self) -> int:
        # Consistent with __eq__: equal errors (same type and state) hash
        # alike, so they can be set members and dict keys.
        return hash((type(self), self.message))


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

    C{remoteType} is its dotted class name, as a C{str}; C{errorId} is the
    id of the server's log line with its traceback (None from a peer that
    sends none).  The message names the type, the method and the id::

        builtins.RuntimeError in myapp.IUserManager.getUser (error id 3f2a9c1e)

    Neither the exception's message nor its traceback travels: either may
    hold what the caller must not see (a password in a database URL).  A
    server made with C{errorDetail="message"} (for development) adds the
    message after the method name.
    """

    fields = ("remoteType", "errorId")


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
