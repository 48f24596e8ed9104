"""
L{Copyable}: a data object sent by value, and L{OpaqueCopy}, what a relay
holds for a Copyable type it never imported.
"""

from __future__ import annotations

from typing import Any

from twisted.spread import pb

from aurora._types import Declared


class Copyable(Declared, pb.Copyable):
    """
    A data object sent by value.

    Declare what travels in C{fields}; nothing else does.  The receiver gets
    an instance of the same class (built without calling C{__init__}), which
    can be sent onward again.  Fields the receiver does not declare are
    dropped; fields the sender did not send are None.
    """

    # The type name it has always been declared and advertised under.
    typeName = "aurora.remoteable.Copyable"
    _kind = "copy"

    def __init__(self, **fields: Any) -> None:
        self._checkFields(fields)
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


class OpaqueCopy(Copyable, declare=False):
    """
    A copy of a type this process (a relay) never imported: it keeps the type
    name and the advertised fields and is sent on unchanged.  Nothing of the
    application's is imported or instantiated.
    """

    def __repr__(self) -> str:
        inner = ", ".join(f"{k}={v!r}" for k, v in self._state().items())
        return f"<opaque {self.typeName}({inner})>"
