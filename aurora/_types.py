"""
The table of classes that may cross the wire by value.

Copyables, Models and Errors declare ``fields``; defining such a class
declares it here under its type name (its module and qualified name,
C{myapp.models.Order.Line} for a nested class, unless the class sets
``typeName``).  Only declared type names are accepted from a peer
(``_jelly.Security`` asks this table), and only declared fields travel.

A receiving process may register a *mirror* class for a type name: a local
subclass that is built instead of the declared class (to add client-side
behaviour).  The unjelly entry installed for each name looks the class up at
receive time, so registration order does not matter.

Declared classes are the process's own code, so they are process-wide.  What
an endpoint learns from its peer is not: the opaque types a client accepts
because its server advertised them live in that client's L{TypeTable}, which
a relay's server shares, and no other endpoint of the process sees them.
"""

from __future__ import annotations

from typing import Any, Callable, cast

from twisted.python.reflect import qual
from twisted.spread import jelly

_declared: dict[bytes, type[Declared]] = {}
_mirrors: dict[bytes, type[Declared]] = {}

unjellyableRegistry = cast("dict[bytes, Any]", jelly.unjellyableRegistry)
"""
jelly's table of what to build for a type name.  Twisted annotates it
C{dict[str, type]}; in fact its keys are bytes, and a value may be any
callable, called as C{f(unjellier, sexp)}.
"""


def _receiver(name: bytes) -> Callable[[Any, list], Any]:
    # jelly calls a non-class registry entry as f(unjellier, sexp): see
    # twisted.spread.jelly._Unjellier.unjelly.  The entry is the process's
    # (jelly has one table); which opaque types it may build is the
    # connection's, asked of the taster that let the name through.
    def receive(unjellier: Any, sexp: list) -> Any:
        cls = _mirrors.get(name) or _declared.get(name)
        if cls is not None:
            return cls._fromWire(unjellier, sexp)
        table = getattr(getattr(unjellier, "taster", None), "types", None)
        found = table.opaque(name) if isinstance(table, TypeTable) else None
        if found is None:
            raise jelly.InsecureJelly(f"type {name!r} is not accepted on this connection")
        opaque, info = found
        return opaque._fromOpaque(info, unjellier, sexp)

    receive.auroraType = name  # type: ignore[attr-defined]
    return receive


def _isReceiver(entry: Any) -> bool:
    """Whether jelly's table entry C{entry} is aurora's (see L{_receiver})."""
    return getattr(entry, "auroraType", None) is not None


def _reserved(name: bytes) -> bool:
    # jelly's and PB's own atoms ("list", "remote", "aurora.ref", ...): a type
    # declared under one would take over how that atom is read.
    return b"." not in name or name == b"aurora.ref"


def declareClass(cls: type[Declared]) -> None:
    """Record C{cls} under its type name so that peers may send it."""
    name = cls.typeName.encode("utf-8")
    if _reserved(name):
        raise ValueError(
            f"{qual(cls)}.typeName {cls.typeName!r} is not a dotted name "
            "(module.Class) or is aurora's own; give it one")
    known = _declared.get(name)
    if known is not None and _qualified(known) != _qualified(cls):
        raise ValueError(
            f"type name {cls.typeName!r} is already declared by {qual(known)}; "
            f"give {qual(cls)} another typeName"
        )
    _declared[name] = cls
    # Written directly rather than through jelly.setUnjellyableForClass, which
    # would also widen twisted's globalSecurity for stock PB brokers in this
    # process.
    unjellyableRegistry[name] = _receiver(name)


def _qualified(cls: type[Any]) -> str:
    """C{module.Outer.Inner}: what tells apart two classes of one module."""
    return f"{cls.__module__}.{cls.__qualname__}"


def registerMirror(original: type[Declared], mirror: type[Declared]) -> None:
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
        unjellyableRegistry.pop(own.encode("utf-8"), None)
    # Sent onward, a mirror travels as the type it mirrors.
    mirror.typeName = original.typeName
    _mirrors[original.typeName.encode("utf-8")] = mirror


class TypeTable:
    """
    The types one endpoint accepts beyond the process's declared classes:
    those its server advertised, accepted as opaque stand-ins that carry
    their type name and fields unchanged so that they can be sent on (a
    relay, the CLI).  A L{aurora.Client} owns one; a relay's server uses its
    upstream client's.  A server on its own has an empty one: it never
    believes what its peers advertise.
    """

    def __init__(self) -> None:
        self._opaque: dict[bytes, tuple[type[Declared], dict[str, Any]]] = {}

    def registerOpaque(self, name: str, opaque: type[Any], fields: Any,
                       keyField: Any = None) -> None:
        """
        Accept type C{name}, whose class this process has not imported, as
        an instance of C{opaque} carrying the type name and the declared
        C{fields}.  A class this process declares itself always wins.
        """
        key = name.encode("utf-8")
        if key in _declared or _reserved(key) or (
                key in unjellyableRegistry and not _isReceiver(unjellyableRegistry[key])):
            # An upstream may not redefine a declared type, an atom, or a
            # type Twisted registered (pb.CopyableFailure).
            return
        if not (isinstance(fields, (list, tuple)) and all(
                isinstance(f, str) and not f.startswith("_") for f in fields)):
            raise ValueError(f"bad fields for opaque type {name!r}: {fields!r}")
        if keyField is not None and keyField not in fields:
            keyField = None
        info = {"typeName": name, "_fields": tuple(fields), "keyField": keyField}
        self._opaque[key] = (opaque, info)
        if key not in unjellyableRegistry:
            unjellyableRegistry[key] = _receiver(key)

    def opaque(self, name: bytes) -> tuple[type[Declared], dict[str, Any]] | None:
        """The stand-in class and its settings for type C{name}, if accepted."""
        return self._opaque.get(name)

    def accepts(self, name: bytes) -> bool:
        """Whether a value of type C{name} may arrive on this endpoint."""
        return name in _declared or name in self._opaque

    def advertised(self) -> dict[str, dict[str, Any]]:
        """Every type this endpoint can receive: kind, fields, key field."""
        types = {}
        for name, (opaque, info) in self._opaque.items():
            types[name.decode("utf-8")] = {
                "kind": opaque._kind, "fields": list(info["_fields"]),
                "keyField": info["keyField"]}
        types.update(advertised())
        return types


def advertised() -> dict[str, dict[str, Any]]:
    """Every class this process declares: kind, fields, key field."""
    return {name.decode("utf-8"): {
        "kind": cls._kind, "fields": list(cls._fields),
        "keyField": getattr(cls, "keyField", None)} for name, cls in _declared.items()}


def isDeclared(name: bytes) -> bool:
    """Whether this process declares a class under type name C{name}."""
    return name in _declared


def allFields(cls: type[Any]) -> tuple[str, ...]:
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

    Subclassing declares the class (see L{declareClass}); C{_fields} holds the
    fields of the whole class tree.
    """

    fields: tuple[str, ...] = ()
    typeName: str
    _fields: tuple[str, ...] = ()
    _kind: str  # "copy", "model" or "error": what a relay must build for it

    def __init_subclass__(cls, declare: bool = True, **kw: Any) -> None:
        super().__init_subclass__(**kw)
        if "typeName" not in cls.__dict__:
            # The qualified name: a class nested in another (Outer.Item) is
            # not the module's top-level Item.
            cls.typeName = _qualified(cls)
        cls._fields = allFields(cls)
        if declare:
            declareClass(cls)

    def _checkFields(self, fields: dict[str, Any]) -> None:
        """Refuse, naming them, fields the class does not declare."""
        unknown = set(fields) - set(self._fields)
        if unknown:
            raise TypeError(
                f"{type(self).__name__}() got unknown field(s) {sorted(unknown)}; "
                f"declared fields: {self._fields}"
            )

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

    @classmethod
    def _fromOpaque(cls, info: dict[str, Any], unjellier: Any, sexp: list) -> Any:
        """An opaque stand-in: the type name and fields come with C{info}."""
        obj = cls.__new__(cls)
        obj.__dict__.update(info)
        obj._setState(unjellier.unjelly(sexp[1]) if len(sexp) > 1 else {})
        return obj
