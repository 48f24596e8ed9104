"""
What an interface says about its methods, and how that travels.

Managers expose exactly the methods of their zope interfaces and check
arguments against the declared signatures; a process that cannot import an
interface module (a relay, the CLI) rebuilds an equivalent interface from the
plain-data description the server sends.
"""

from __future__ import annotations

import inspect
import sys
import weakref
from typing import Any, Callable, cast

from twisted.spread import pb
from zope.interface import Interface, implementedBy, providedBy
from zope.interface.declarations import ProvidesClass
from zope.interface.interface import InterfaceClass, Method
from zope.interface.interfaces import IInterface, IMethod

from aurora.errors import BadArguments, _safeRepr, _safeText


def _identifier(iface: Any) -> str:
    # zope.interface's stubs do not declare __identifier__.
    return str(iface.__identifier__)


def interfaceName(iface: Any) -> str:
    """The dotted name of an interface, or C{iface} itself if a C{str}."""
    if isinstance(iface, str):
        return iface
    if IInterface.providedBy(iface):
        return _identifier(iface)
    raise TypeError(
        "expected a zope.interface Interface or its dotted name, got "
        f"{_safeRepr(iface)}"
    )


def _cached(obj: Any, attribute: str, compute: Callable[[], Any]) -> Any:
    """
    C{compute()}, kept on C{obj} itself: the cache lives and dies with the
    interface, declaration or method it describes, so nothing here pins
    what a server described (a global cache would, up to its size), and an
    interface learned again from an upgraded server, which compares equal
    to the old one by name, gets answers of its own.
    """
    value = obj.__dict__.get(attribute)
    if value is None:
        value = compute()
        setattr(obj, attribute, value)
    return value


def methodsOf(iface: InterfaceClass) -> dict[str, Method]:
    """The public methods of C{iface}, inherited ones included."""
    return cast("dict[str, Method]", _cached(iface, "_auroraMethods", lambda: {
        name: cast(Method, desc)
        for name, desc in iface.namesAndDescriptions(all=True)
        if IMethod.providedBy(desc) and not name.startswith("_")
    }))


# PB's own interfaces (IJellyable's jellyFor, ...) are plumbing, never offered.
_PLUMBING = frozenset(implementedBy(pb.Referenceable).flattened())


def provide(obj: Any, *ifaces: InterfaceClass) -> None:
    """
    Declare that C{obj} directly provides exactly C{ifaces}.

    Unlike C{directlyProvides}, the declaration is C{obj}'s own: zope.interface
    shares declarations between objects whose interfaces compare equal, and
    interfaces compare by name, so an interface learned again from an upgraded
    server would otherwise go on being served with the one it replaced.
    """
    key = (type(obj), *(id(i) for i in ifaces))
    spec = _declarations.get(key)
    if spec is None:
        # Shared by every object of that class providing these very
        # interfaces (the spec holds them, so their ids stay theirs): one
        # table of exposed methods for ten thousand wrappers, not ten thousand.
        spec = _declarations[key] = ProvidesClass(type(obj), *ifaces)
    obj.__provides__ = spec


_declarations: weakref.WeakValueDictionary[tuple[Any, ...], Any] = \
    weakref.WeakValueDictionary()


def offeredInterfaces(obj: Any) -> list[InterfaceClass]:
    """The application interfaces C{obj} declares (not PB's plumbing)."""
    return [i for i in providedBy(obj).interfaces() if i not in _PLUMBING]


def exposedMethods(obj: Any) -> dict[str, tuple[InterfaceClass, Method]]:
    """Every method of every interface C{obj} offers, with its interface."""
    spec = providedBy(obj)

    def compute() -> dict[str, tuple[InterfaceClass, Method]]:
        exposed: dict[str, tuple[InterfaceClass, Method]] = {}
        for iface in spec.flattened():
            if iface in _PLUMBING:
                continue
            for name, method in methodsOf(iface).items():
                exposed.setdefault(name, (iface, method))
        return exposed

    return cast("dict[str, tuple[InterfaceClass, Method]]",
                _cached(spec, "_auroraExposed", compute))


_MISSING = inspect.Parameter.empty


def signatureOf(method: Method) -> inspect.Signature:
    """An C{inspect.Signature} equivalent to a zope method's declaration."""
    return cast(inspect.Signature, _cached(method, "_auroraSignature",
                                           lambda: _signature(method)))


def _signature(method: Method) -> inspect.Signature:
    info = method.getSignatureInfo()
    params = []
    for name in info["positional"]:
        default = _MISSING if name in info["required"] else None
        params.append(
            inspect.Parameter(
                name, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=default
            )
        )
    if info["varargs"]:
        params.append(
            inspect.Parameter(info["varargs"], inspect.Parameter.VAR_POSITIONAL)
        )
    if info["kwargs"]:
        params.append(inspect.Parameter(info["kwargs"], inspect.Parameter.VAR_KEYWORD))
    return inspect.Signature(params)


def _arity(method: Method) -> tuple[int, int | None]:
    def compute() -> tuple[int, int | None]:
        info = method.getSignatureInfo()
        return len(info["required"]), None if info["varargs"] else len(info["positional"])

    return cast("tuple[int, int | None]", _cached(method, "_auroraArity", compute))


def checkArguments(
    iface: InterfaceClass, method: Method, args: tuple, kw: dict[str, Any]
) -> None:
    """Raise L{BadArguments} unless C{args, kw} fit C{method}'s signature."""
    if not kw:
        # The common case, checked without binding a Signature (which costs
        # more than the rest of a call's dispatch).
        least, most = _arity(method)
        if least <= len(args) and (most is None or len(args) <= most):
            return
    sig = signatureOf(method)
    try:
        sig.bind(*args, **kw)
    except TypeError as e:
        raise BadArguments(
            f"{iface.__identifier__}.{method.__name__}{sig}: {_safeText(e)}",
            interface=iface.__identifier__,
            method=method.__name__,
        ) from None


def describe(iface: InterfaceClass) -> dict[str, Any]:
    """Plain data that L{synthesize} turns back into an equivalent interface."""
    methods = {}
    for name, method in methodsOf(iface).items():
        info = method.getSignatureInfo()
        methods[name] = {
            "doc": method.getDoc() or "",
            "positional": list(info["positional"]),
            "required": list(info["required"]),
            "varargs": info["varargs"],
            "kwargs": info["kwargs"],
            "noReplay": bool(method.queryTaggedValue("noReplay", False)),
        }
    return {"name": iface.__identifier__, "doc": iface.getDoc() or "", "methods": methods}


def synthesize(description: dict[str, Any]) -> InterfaceClass:
    """
    An interface with the name, methods and signatures of C{description}.

    It is a new interface object, not the original, so C{providedBy} checks
    against the original fail: it serves processes that never import the
    original (relays, the CLI).
    """
    module, _, short = description["name"].rpartition(".")
    attrs: dict[str, Any] = {}
    for name, m in description["methods"].items():
        if name.startswith("_"):
            continue
        method = Method(name, __doc__=m.get("doc", ""))
        method.positional = tuple(m["positional"])
        method.required = tuple(m["required"])
        method.optional = {
            p: None for p in m["positional"] if p not in m["required"]
        }
        method.varargs = m.get("varargs")
        method.kwargs = m.get("kwargs")
        if m.get("noReplay"):
            method.setTaggedValue("noReplay", True)
        attrs[name] = method
    iface = InterfaceClass(
        short, (Interface,), attrs, __doc__=description.get("doc", ""),
        __module__=module,
    )
    iface.setTaggedValue(_SYNTHESIZED, True)
    return iface


_SYNTHESIZED = "aurora.synthesized"


def isSynthesized(iface: InterfaceClass) -> bool:
    """Whether C{iface} was built by L{synthesize} (not imported)."""
    return bool(iface.queryTaggedValue(_SYNTHESIZED, False))


def findInterface(obj: Any, name: str) -> InterfaceClass | None:
    """The interface named C{name} among those C{obj} provides."""
    for iface in providedBy(obj).flattened():
        if _identifier(iface) == name:
            return cast(InterfaceClass, iface)
    return None


def importedInterface(name: str) -> InterfaceClass | None:
    """
    The interface named C{name} if its module is already imported.

    Never imports: a name that came over the wire must not make this process
    run module code.
    """
    module, _, short = name.rpartition(".")
    obj = getattr(sys.modules.get(module), short, None)
    if IInterface.providedBy(obj) and _identifier(obj) == name:
        return cast(InterfaceClass, obj)
    return None
