"""
Write batching: what the brokers write while their reactor handles one
arrival of input, sent when it is done, one send per connection (see
L{Cork}).
"""

from __future__ import annotations

from typing import Any
from weakref import WeakKeyDictionary

from aurora._seams import ICorked


class Cork:
    """
    Holds what is written to each connection while input is handled, and
    sends it, one send per connection, when the handling is done.  A batch
    of pipelined calls is answered with one send, and a burst of model
    changes reaches each observer in one, as Twisted's own buffering would
    do, without its per-write cost.

    The brokers that share a cork are those whose input can cause each
    other's writes: every endpoint of one reactor (see L{forReactor}).  A
    relay's upstream connection is a L{aurora.Client}'s and its observers'
    are its L{aurora.Server}'s; one batch for both sends an upstream burst
    of model changes to each observer in one.  A process-wide batch would
    mix the writes of reactors running in other threads.
    """

    LIMIT = 64 * 1024
    """Bytes held for one connection, at most: past it they go at once, so
    that a peer that does not read pauses its L{aurora._flow.Flow} as it
    would without the cork."""

    def __init__(self) -> None:
        self._held: dict[ICorked, list[bytes]] | None = None
        self._sizes: dict[ICorked, int] = {}

    def hold(self) -> bool:
        """
        Hold writes from now until L{flush}, unless they are held already
        (input handled while other input is): True if this call began the
        holding, and so must end it with L{flush}.
        """
        if self._held is not None:
            return False
        self._held = {}
        return True

    def take(self, connection: ICorked, data: bytes) -> bytes | None:
        """
        Hold C{data} for C{connection} if writes are held; what to send now:
        C{data} itself when they are not, everything held for C{connection}
        once it comes to over L{LIMIT}, else None.
        """
        held = self._held
        if held is None:
            return data
        parts = held.get(connection)
        if parts is None:
            held[connection] = parts = []
            self._sizes[connection] = 0
        parts.append(data)
        self._sizes[connection] += len(data)
        if self._sizes[connection] <= self.LIMIT:
            return None
        del held[connection]
        del self._sizes[connection]
        return b"".join(parts)

    def discard(self, connection: ICorked) -> None:
        """Drop what is held for C{connection} (a refused peer gets no answers)."""
        if self._held is not None:
            self._held.pop(connection, None)
            self._sizes.pop(connection, None)

    def flush(self) -> None:
        """Stop holding writes and send what was held, one send per connection."""
        held, self._held = self._held, None
        self._sizes = {}
        if held is None:
            return
        for connection, parts in held.items():
            connection.sendHeld(parts[0] if len(parts) == 1 else b"".join(parts))

    @classmethod
    def forReactor(cls, reactor: Any) -> Cork:
        """The cork every endpoint on C{reactor} shares."""
        cork = _corks.get(reactor)
        if cork is None:
            cork = _corks[reactor] = cls()
        return cork


# One cork per reactor, gone with its reactor.
_corks: WeakKeyDictionary[Any, Cork] = WeakKeyDictionary()
