"""
The local registry: managers registered under zope interfaces.
"""

from __future__ import annotations

from types import MappingProxyType
from typing import Any, Mapping

from twisted.internet import defer
from twisted.python.reflect import qual
from zope.interface import implementer
from zope.interface.interfaces import IInterface

from aurora._schema import interfaceName
from aurora.errors import RegistrationError, UnknownInterface, _safeRepr
from aurora.interfaces import IRegistry


@implementer(IRegistry)
class Registry:
    """
    Managers keyed by interface.

    Local code and remote clients ask the same object:
    C{registry.getManager(IUserManager)} (or the dotted name
    C{"myapp.interfaces.IUserManager"}, since only names travel).
    """

    def __init__(self) -> None:
        self._managers: dict[str, Any] = {}
        self._interfaces: dict[str, Any] = {}

    def register(self, iface: Any, manager: Any, *, replace: bool = False) -> None:
        """
        Register C{manager} under C{iface}.

        @raise RegistrationError: C{iface} is not an interface, C{manager}
            does not provide it, or C{iface} is taken and C{replace} is false.
        """
        if not IInterface.providedBy(iface):
            raise RegistrationError(
                f"cannot register {_safeRepr(manager)}: {_safeRepr(iface)} is not a "
                "zope.interface Interface"
            )
        name = interfaceName(iface)
        if not iface.providedBy(manager):
            raise RegistrationError(
                f"cannot register {_safeRepr(manager)} under {name}: "
                f"{qual(type(manager))} does not provide {name} "
                f"(declare it with @implementer({iface.__name__}))"
            )
        if name in self._managers and not replace:
            raise RegistrationError(
                f"{name} is already registered to {_safeRepr(self._managers[name])}; "
                "pass replace=True to replace it"
            )
        self._managers[name] = manager
        self._interfaces[name] = iface

    def unregister(self, iface: Any) -> None:
        """Remove the manager registered under C{iface} (or its name)."""
        name = interfaceName(iface)
        if name not in self._managers:
            raise UnknownInterface(
                f"cannot unregister {name}: nothing is registered under it",
                interface=name,
            )
        del self._managers[name]
        del self._interfaces[name]

    def lookup(self, iface: Any) -> Any:
        """The manager for C{iface}, synchronously; L{UnknownInterface} else."""
        name = interfaceName(iface)
        try:
            return self._managers[name]
        except KeyError:
            raise UnknownInterface(
                f"no manager is registered under {name}", interface=name
            ) from None

    def managers(self) -> Mapping[str, Any]:
        """
        What is registered: dotted interface name to manager, in the order
        registered.  A read-only view (it follows later registrations); for a
        service that runs them (C{twistd registry} starts and stops managers
        that provide C{IService}) or a relay that serves some of its own.
        """
        return MappingProxyType(self._managers)

    def getManager(self, iface: Any) -> defer.Deferred:
        return defer.maybeDeferred(self.lookup, iface)

    def interfaces(self) -> defer.Deferred:
        return defer.succeed(sorted(self._managers))

    def __repr__(self) -> str:
        return f"<aurora.Registry {sorted(self._managers)}>"
