"""
The seams of aurora, as zope interfaces.

L{IRegistry} is what application code programs against: a local
L{aurora.Registry} and a remote one from L{aurora.Client.getRegistry} both
provide it, so one function serves either.  L{IRegistryService} is the root
object a L{aurora.Server} publishes on each connection.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from zope.interface import Interface


class IRegistry(Interface):
    """Managers registered under interfaces."""

    def getManager(iface: Any) -> Deferred[Any]:
        """
        A Deferred firing with the manager registered under C{iface} (an
        interface or its dotted name), or failing with
        L{aurora.errors.UnknownInterface}.
        """

    def interfaces() -> Deferred[list[str]]:
        """A Deferred firing with the sorted dotted names on offer."""


class IRegistryService(Interface):
    """What a Server publishes as each connection's root object."""

    def hello(peer: dict[str, Any]) -> dict[str, Any]:
        """
        Exchange protocol versions: C{peer} is the client's C{{"protocol":
        int, "aurora": str, "timeout": seconds}}; the answer is the server's,
        with the connection's reference limit so far.  An incompatible peer
        gets L{aurora.errors.IncompatibleVersion}.  With a C{timeout}, the
        server drops the connection after that long without hearing from the
        client.  (Since protocol 2 a C{"referenceLimit"} asked for here is
        ignored: limits are raised at L{login}, for the identity.)
        """

    def ping() -> None:
        """Nothing: the client's heartbeat, answered to show the link works."""

    def login(username: bytes | None, password: bytes | None) -> Any:
        """
        The L{IRegistryView} for these credentials: C{username} and
        C{password} as bytes (refused on a plain connection unless the server
        allows it), or both None for the client certificate of a mutual-TLS
        connection, or else anonymous access.  L{aurora.errors.LoginFailed}
        otherwise, with the same message for an unknown user and a wrong
        password (answered after a delay that grows with recent failures);
        L{aurora.errors.LimitExceeded} when the server is too busy checking
        other logins.  Once logged in, the connection has the limits the
        server grants this identity.
        """

    def types() -> dict[str, dict[str, Any]]:
        """
        C{{type name: {"kind": "copy"|"model"|"error", "fields": [...],
        "keyField": name or None}}}: every type this side can send, so a relay
        can pass them on without their classes.
        """


class IRegistryView(Interface):
    """One identity's view of the published registry."""

    def getManager(name: str) -> Any:
        """
        The manager registered under the dotted name C{name}, exposing only
        that interface; L{aurora.errors.UnknownInterface} if there is none or
        this identity may not use it (the two are indistinguishable).
        """

    def interfaces() -> Any:
        """The sorted dotted names this identity may use."""
