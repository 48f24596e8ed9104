"""
Logging that a peer cannot turn into a flood.

What a peer does wrong (bad input, wrong passwords) and what application code
keeps raising are logged through a L{LogLimiter}: at most one line per key
per interval; the next line after a quiet spell says how many were left out
("... and 41 more like it").  The limiter's memory is bounded too: it keeps
at most C{maxKeys} keys, and past that every new key shares one.
"""

from __future__ import annotations

from typing import Any

from twisted.logger import Logger
from twisted.python.failure import Failure

_OVERFLOW = ("aurora._quiet", "too many keys")


class LogLimiter:
    """
    At most one log line per key per C{interval} seconds of C{clock}.

    @param log: where the lines go.
    @param clock: what tells the time (an C{IReactorTime}).
    """

    def __init__(self, log: Logger, clock: Any, *, interval: float = 60.0,
                 maxKeys: int = 10_000) -> None:
        self.log = log
        self.clock = clock
        self.interval = interval
        self.maxKeys = maxKeys
        # key -> [time of the last line written, lines left out since]
        self._keys: dict[Any, list[float]] = {}

    def _admit(self, key: Any) -> int | None:
        """None to stay quiet; else how many lines were left out before."""
        now = self.clock.seconds()
        entry = self._keys.get(key)
        if entry is None:
            if len(self._keys) >= self.maxKeys:
                self._prune(now)
                if len(self._keys) >= self.maxKeys:
                    key = _OVERFLOW
                    entry = self._keys.get(key)
        if entry is None:
            self._keys[key] = [now, 0]
            return 0
        if now - entry[0] < self.interval:
            entry[1] += 1
            return None
        skipped = int(entry[1])
        entry[0], entry[1] = now, 0
        return skipped

    def _prune(self, now: float) -> None:
        for key in [k for k, (t, n) in self._keys.items()
                    if now - t >= self.interval and not n]:
            del self._keys[key]

    @staticmethod
    def _more(skipped: int) -> str:
        return f" (and {skipped} more like it)" if skipped else ""

    def warn(self, key: Any, format: str, **kw: Any) -> bool:
        """Log C{format} unless C{key} was logged within the interval."""
        skipped = self._admit(key)
        if skipped is None:
            return False
        self.log.warn(format + "{aurora_more}", aurora_more=self._more(skipped), **kw)
        return True

    def failure(self, key: Any, format: str, failure: Failure | None = None,
                **kw: Any) -> bool:
        """Log C{format} with C{failure}'s traceback, likewise limited."""
        skipped = self._admit(key)
        if skipped is None:
            return False
        self.log.failure(format + "{aurora_more}", failure,
                         aurora_more=self._more(skipped), **kw)
        return True
