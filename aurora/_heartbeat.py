"""
Liveness: when a connection that has gone quiet is pinged, and when it is
declared dead (see L{Watchdog}).
"""

from __future__ import annotations

from typing import Any, Callable

from aurora._seams import IConnection


class Watchdog:
    """
    Declares a connection dead when it has been silent too long.

    A closed socket is noticed by TCP; a silent partition (packets dropped, no
    RST) is not, so the client pings and both sides watch what arrives.  One
    self-rescheduling timer serves both: it wakes at the next ping or at the
    silence deadline, whichever is first, so nothing is paid per packet.

    Silence is judged fairly: bytes already waiting in the socket (this
    process was too busy to read them) are read first, and while this side
    has stopped reading the peer (backpressure), the peer is not silent.

    @param interval: with C{ping}, how often to call it; with C{quiet}, how
        long the peer may be silent before C{ping} is called (once per
        silence: the server's idle probe).
    @param messageTimeout: the longest a message may take to arrive whole
        (a peer trickling a message to hold the connection), or None.
    """

    def __init__(self, broker: IConnection, clock: Any, timeout: float,
                 interval: float | None, ping: Callable[[], Any] | None, *,
                 quiet: bool = False, messageTimeout: float | None = None) -> None:
        self.broker = broker
        self.clock = clock
        self.timeout = timeout
        self.interval = interval
        self.ping = ping
        self.quiet = quiet
        self.messageTimeout = messageTimeout
        self.lastPing = float("-inf") if quiet else clock.seconds()
        self.timer: Any = None

    def start(self) -> None:
        self._schedule(self.clock.seconds())

    def stop(self) -> None:
        if self.timer is not None and self.timer.active():
            self.timer.cancel()
        self.timer = None

    def _schedule(self, now: float, delay: float | None = None) -> None:
        if delay is None:
            last = self.broker.lastReceived
            wake = last + self.timeout
            if self.ping is not None and self.interval:
                if not self.quiet:
                    wake = min(wake, self.lastPing + self.interval)
                elif self.lastPing <= last:  # not probed since it last spoke
                    wake = min(wake, last + self.interval)
            since = self.broker.messageSince
            if self.messageTimeout is not None and since is not None:
                wake = min(wake, since + self.messageTimeout)
            delay = max(0.0, wake - now)
        self.timer = self.clock.callLater(delay, self._tick)

    def _drop(self, why: str, **kw: Any) -> None:
        broker = self.broker
        # Keyed by address: a client retrying a silent server says so once
        # per log interval, not at every attempt.
        broker.peerLog.warn(("silent", broker.peer), why + "; dropping the connection",
                            peer=broker.peer, **kw)
        broker.transport.abortConnection()

    def _tick(self) -> None:
        self.timer = None
        broker = self.broker
        now = self.clock.seconds()
        if broker.readingPaused:
            # Backpressure: this side is not reading, so silence proves nothing.
            self._schedule(now, self.timeout)
            return
        since = broker.messageSince
        if self.messageTimeout is not None and since is not None and \
                now - since >= self.messageTimeout - 1e-9:
            self._drop("{peer} took over {seconds} s to send one message",
                       seconds=self.messageTimeout)
            return
        silent = now - broker.lastReceived
        if silent >= self.timeout - 1e-9:
            if broker.hasUnread():
                # This process was busy, not the peer silent: read first.
                self._schedule(now, 0.0)
                return
            self._drop("nothing from {peer} for {silent:.1f} s", silent=silent)
            return
        if self.ping is not None and self.interval:
            due = (silent >= self.interval - 1e-9 and self.lastPing <= broker.lastReceived) \
                if self.quiet else now - self.lastPing >= self.interval - 1e-9
            if due:
                self.lastPing = now
                self.ping()
        self._schedule(now)
