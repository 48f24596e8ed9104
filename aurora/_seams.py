"""
Interfaces between aurora's own layers (the public ones are in
L{aurora.interfaces}): what the pacing and liveness of a connection need
from it, and what they hand held model updates back to.  Lower modules
talk to these, never to the classes above them.
"""

from __future__ import annotations

from zope.interface import Attribute, Interface


class IConnection(Interface):
    """One peer's connection, as L{aurora._flow.Flow} and L{aurora._heartbeat.Watchdog} see it."""

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


class IUpdateSource(Interface):
    """What a L{aurora._flow.Flow} holds model updates for: a model."""

    def deliverUpdate(connection: IConnection, observer: object, name: str,
                      value: object) -> None:
        """Send C{name = value} to C{observer}, the peer's mirror, now."""
