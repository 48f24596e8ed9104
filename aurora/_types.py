"""
The table of classes that may cross the wire by value.

Copyables, Models and Errors declare ``fields``; defining such a class
declares it here under its type name (its dotted name unless the class sets
``typeName``).  Only declared type names are accepted from a peer
(``_wire.Security`` asks this table), and only declared fields travel.

A receiving process may register a *mirror* class for a type name: a local
subclass that is built instead of the declared class (to add client-side
behaviour).  The unjelly entry installed for each name looks the class up at
receive time, so registration order does not matter.
"""

from __future__ import annotations

from typing import Any, Callable

from twisted.python.reflect import qual
from twisted.spread import jelly

_declared: dict[bytes, type] = {}
_mirrors: dict[bytes, type] = {}


def _receiver(name: bytes) -> Callable[[Any, list], Any]:
    # jelly calls a non-class registry entry as f(unjellier, sexp): see
    # twisted.spread.jelly._Unjellier.unjelly.
    def receive(unjellier: Any, sexp: list) -> Any:
        return classFor(name)._fromWire(unjellier, sexp)

    return receive


def declare(cls: type) -> None:
    """Record C{cls} under its type name so that peers may send it."""
    name = cls.typeName.encode("utf-8")
    known = _declared.get(name)
    if known is not None and qual(known) != qual(cls):
        raise ValueError(
            f"type name {cls.typeName!r} is already declared by {qual(known)}; "
            f"give {qual(cls)} another typeName"
        )
    _declared[name] = cls
    # Written directly rather than through jelly.setUnjellyableForClass, which
    # would also widen twisted's globalSecurity for stock PB brokers in this
    # process.
    jelly.unjellyableRegistry[name] = _receiver(name)


def registerMirror(original: type, mirror: type) -> None:
    """
    Build C{mirror} instead of C{original} when a value of C{original}'s type
    arrives.  C{mirror} must subclass C{original}, so C{isinstance} holds for
    code that only knows the original.
    """
    if not issubclass(mirror, original):
        raise TypeError(
            f"mirror class {qual(mirror)} must subclass {qual(original)}"
        )
    own = mirror.__dict__.get("typeName")
    if own is not None and own != original.typeName:
        _declared.pop(own.encode("utf-8"), None)
        jelly.unjellyableRegistry.pop(own.encode("utf-8"), None)
    # Sent onward, a mirror travels as the type it mirrors.
    mirror.typeName = original.typeName
    _mirrors[original.typeName.encode("utf-8")] = mirror


def classFor(name: bytes) -> type:
    """The local class to build for an incoming type name."""
    return _mirrors.get(name) or _declared[name]


def isDeclared(name: bytes) -> bool:
    return name in _declared


def allFields(cls: type) -> tuple[str, ...]:
    """The declared fields of C{cls} and its bases, base fields first."""
    seen: dict[str, None] = {}
    for klass in reversed(cls.__mro__):
        for name in klass.__dict__.get("fields", ()):
            if name.startswith("_"):
                raise TypeError(
                    f"{qual(cls)}.fields: {name!r} starts with an underscore; "
                    "underscore names never travel"
                )
            seen[name] = None
    return tuple(seen)


class Declared:
    """
    Mixin for classes whose declared C{fields} travel by value.

    Subclassing declares the class (see L{declare}); C{_fields} holds the
    fields of the whole class tree.
    """

    fields: tuple[str, ...] = ()
    typeName: str
    _fields: tuple[str, ...] = ()

    def __init_subclass__(cls, **kw: Any) -> None:
        super().__init_subclass__(**kw)
        if "typeName" not in cls.__dict__:
            cls.typeName = qual(cls)
        cls._fields = allFields(cls)
        declare(cls)

    def _state(self) -> dict[str, Any]:
        d = self.__dict__
        return {name: d.get(name) for name in self._fields}

    def _setState(self, state: Any) -> None:
        """Take the declared fields from C{state}; unknown ones are dropped."""
        if not isinstance(state, dict):
            state = {}
        d = self.__dict__
        for name in self._fields:
            d[name] = state.get(name)

    # pb.Copyable asks these two when it jellies us.
    def getTypeToCopy(self) -> bytes:
        return self.typeName.encode("utf-8")

    def getStateToCopy(self) -> dict[str, Any]:
        return self._state()

    @classmethod
    def _fromWire(cls, unjellier: Any, sexp: list) -> Any:
        obj = cls.__new__(cls)
        obj._setState(unjellier.unjelly(sexp[1]) if len(sexp) > 1 else {})
        return obj
