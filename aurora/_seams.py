"""
Interfaces between aurora's own layers (the public ones are in
L{aurora.interfaces}): what the pacing, liveness and write batching of a
connection need from it, what they hand held model updates back to, and
what a connection asks of the server about its peer.  Lower modules talk to
these, never to the classes above them.
"""

from __future__ import annotations

from zope.interface import Attribute, Interface


class IConnection(Interface):
    """
    One peer's connection, as L{aurora._flow.Flow}, L{aurora._heartbeat.Watchdog}
    and L{aurora._jelly}'s receivers see it.
    """

    peer = Attribute("The peer's address, for log lines (C{host:port}).")
    peerLog = Attribute("A L{aurora._quiet.LogLimiter} for what the peer causes.")
    transport = Attribute("The connection's transport (C{abortConnection} drops it).")
    limits = Attribute("The connection's L{aurora._limits.Limits}.")
    lastReceived = Attribute("When the peer last sent anything (clock seconds).")
    messageSince = Attribute("When the message under way began to arrive, or None.")
    readingPaused = Attribute("Whether this side has stopped reading the peer.")

    def hasUnread() -> bool:
        """Whether bytes from the peer wait in the socket, not yet read."""

    def pauseReading(why: str) -> None:
        """Stop reading the peer for C{why} (until L{resumeReading} of it)."""

    def resumeReading(why: str) -> None:
        """Read the peer again, once nothing else holds reading paused."""

    def receiveRemote(luid: object) -> object:
        """This connection's reference to the peer's object C{luid}."""

    def receiveCached(luid: object) -> object:
        """The mirror of the peer's model C{luid}, sent again."""


class IUpdateSource(Interface):
    """What a L{aurora._flow.Flow} holds model updates for: a model."""

    def deliverUpdate(connection: IConnection, observer: object, name: str,
                      value: object) -> None:
        """Send C{name = value} to C{observer}, the peer's mirror, now."""


class ICorked(Interface):
    """A connection whose writes a L{aurora._cork.Cork} holds."""

    def sendHeld(data: bytes) -> None:
        """
        Send C{data}, what was held for this connection, now.  Never raises:
        a failure is logged, and the other connections' writes still go.
        """


class IAccess(Interface):
    """
    What one connection's peer may use, as the server decides it (its
    identity once logged in, a relay's allow-list); held by the connection
    from the start, updated by the server at login.
    """

    def mayUse(interfaceName: str) -> bool:
        """Whether the peer may use managers under C{interfaceName}."""
