"""
What one peer may make a process spend: the budgets of a connection, and
the budget all of a server's connections share for messages in progress.

Every resource a peer can make the server hold is counted against one of
these (see the README's Threat model): bytes and items of a message while it
is decoded, messages in progress on all connections at once, bytes waiting
to be sent to it, calls in progress, references and subscriptions.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Any, Mapping

from aurora._banana import Refusal

MIB = 1024 * 1024

MAX_MESSAGE_BYTES = 16 * MIB
"""The largest message (one top-level banana expression) a peer may send."""

MAX_DEPTH = 100
"""The deepest nesting of lists in one message (unjelly recurses)."""


@dataclass(frozen=True)
class Limits:
    """
    The budgets of one connection.  A server's connections start with
    L{Limits.beforeLogin} and get L{Limits} (or what their identity was
    granted) once logged in.

    @ivar maxMessageBytes: the largest message; one over it is refused at
        the byte that crosses it, and the connection closed.
    @ivar maxMessageItems: the most items (list elements, summed over every
        list of a message, charged from each list's header before anything
        is built) one message may hold.  A call over it is answered with
        L{aurora.errors.LimitExceeded} and the connection stays.  2,000,000
        lets a list of 100,000 small records through (about 18 items each).
    @ivar maxDepth: the deepest nesting of lists in a message; like items.
    @ivar referenceLimit: references and model subscriptions, each way.
    @ivar maxPendingCalls: calls in progress (answer not yet sent); at this
        many the server stops reading the peer until one completes.
    @ivar maxOutboundBytes: bytes waiting to be sent to the peer beyond the
        transport's own buffer; past it the server stops reading the peer's
        requests, and drops the peer after C{maxLag} seconds of not reading.
    """

    maxMessageBytes: int = MAX_MESSAGE_BYTES
    maxMessageItems: int = 2_000_000
    maxDepth: int = MAX_DEPTH
    referenceLimit: int = 1024
    maxPendingCalls: int = 1000
    maxOutboundBytes: int = 16 * MIB

    @classmethod
    def beforeLogin(cls) -> Limits:
        """
        What a peer may send before it has logged in: enough for C{hello}
        and C{login}, and too little to cost the server anything.
        """
        return cls(maxMessageBytes=16 * 1024, maxMessageItems=1000, maxDepth=20,
                   referenceLimit=16, maxPendingCalls=8)

    def granted(self, grant: Mapping[str, int] | None, cap: Limits | None = None) -> Limits:
        """
        These limits raised (never lowered) by C{grant}, a mapping of limit
        names to values; each at most what C{cap} says, if given.
        """
        if not grant:
            return self
        known = {f.name for f in fields(self)}
        changes: dict[str, int] = {}
        for name, value in grant.items():
            if name not in known:
                raise ValueError(
                    f"unknown limit {name!r} in a grant: the limits are "
                    f"{', '.join(sorted(known))}")
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"grant {name}={value!r}: a positive whole number")
            ceiling = getattr(cap, name) if cap is not None else value
            changes[name] = max(getattr(self, name), min(value, ceiling))
        return replace(self, **changes)


class DecodingPool:
    """
    The budget that all of one server's connections share for messages
    being decoded: per-connection budgets times C{maxConnections} is not a
    bound a machine can afford, so a message that would take the total past
    this is refused like one over its own budget.

    Connections report what their message in progress holds after each read
    (L{charge}); a message that arrives in one read and is handled at once
    is charged nothing.
    """

    def __init__(self, maxBytes: int = 64 * MIB, maxItems: int = 4_000_000) -> None:
        self.maxBytes = maxBytes
        self.maxItems = maxItems
        self.bytes = 0
        self.items = 0
        self._held: dict[Any, tuple[int, int]] = {}

    def charge(self, holder: Any, nbytes: int, nitems: int) -> Refusal | None:
        """
        C{holder}'s message in progress now holds this much; a refusal if
        the pool is over budget with it.
        """
        old = self._held.pop(holder, None)
        if old is not None:
            self.bytes -= old[0]
            self.items -= old[1]
        if not (nbytes or nitems):
            return None
        self._held[holder] = (nbytes, nitems)
        self.bytes += nbytes
        self.items += nitems
        if self.bytes > self.maxBytes:
            return Refusal("pool", self.maxBytes)
        if self.items > self.maxItems:
            return Refusal("pool", self.maxItems)
        return None

    def release(self, holder: Any) -> None:
        """C{holder} holds nothing any more (its message is refused or done)."""
        self.charge(holder, 0, 0)
