"""
Pacing what is written to one connection (see L{Flow}).
"""

from __future__ import annotations

from collections import deque
from typing import Any

from twisted.internet.interfaces import IPushProducer
from zope.interface import implementer

from aurora._seams import IConnection, IUpdateSource


@implementer(IPushProducer)
class Flow:
    """
    Paces what is written to one connection.

    Registered as the transport's streaming producer.  While the peer does
    not read fast enough (the transport's buffer is full), nothing more is
    handed to the transport: answers and errors wait here in order, counted
    in bytes, and model updates are kept one per model and field, the
    latest value winning.  Past C{maxOutboundBytes} waiting, the broker
    stops reading the peer's requests (TCP pushes back on it).  Everything
    goes out when the buffer drains.  A peer that stays behind longer than
    C{maxLag} seconds, or with more than C{maxPending} model fields
    waiting, is disconnected (and resyncs when it reconnects, like any
    client).
    """

    def __init__(self, broker: IConnection, clock: Any, maxPending: int = 10_000,
                 maxLag: float = 30.0) -> None:
        self.broker = broker
        self.clock = clock
        self.maxPending = maxPending
        self.maxLag = maxLag
        self.paused = False
        self.since = 0.0
        self.timer: Any = None
        self.pending: dict[tuple[IUpdateSource, str], tuple[Any, Any]] = {}
        self.outbox: deque[bytes] = deque()
        self.queued = 0  # bytes in outbox

    def pauseProducing(self) -> None:
        if not self.paused:
            self.paused = True
            self.since = self.clock.seconds()
            # A peer that does not read for maxLag is dropped, whatever is
            # waiting for it.  Reading from it is not paused here: TLS pauses
            # this producer during its own handshake (see queue).
            self.timer = self.clock.callLater(self.maxLag, self._tooSlow)

    def _tooSlow(self) -> None:
        self.timer = None
        self.broker.peerLog.warn(
            ("slow", id(self)), "{peer} has not read for {lag} s ({queued} bytes "
            "waiting for it); disconnecting it",
            peer=self.broker.peer, lag=self.maxLag, queued=self.queued)
        self._clear()
        self.broker.transport.abortConnection()

    def queue(self, data: bytes) -> None:
        """Keep C{data} for the peer until the transport takes more."""
        self.outbox.append(data)
        self.queued += len(data)
        if self.queued > self.broker.limits.maxOutboundBytes:
            self.broker.pauseReading("outbound")

    def resumeProducing(self) -> None:
        if self.timer is not None and self.timer.active():
            self.timer.cancel()
        self.timer = None
        self.paused = False
        outbox, transport = self.outbox, self.broker.transport
        while outbox and not self.paused:
            data = outbox.popleft()
            self.queued -= len(data)
            transport.write(data)  # may pause this producer again at once
        if outbox:
            return
        self.broker.resumeReading("outbound")
        pending, self.pending = self.pending, {}
        items = iter(pending.items())
        for (model, name), (observer, value) in items:
            if self.paused:  # the buffer filled up again: keep the rest
                self.pending[(model, name)] = (observer, value)
                self.pending.update(items)
                break
            model.deliverUpdate(self.broker, observer, name, value)

    def _clear(self) -> None:
        self.pending.clear()
        self.outbox.clear()
        self.queued = 0

    def stopProducing(self) -> None:
        self._clear()
        if self.timer is not None and self.timer.active():
            self.timer.cancel()
        self.timer = None

    def forget(self, model: IUpdateSource) -> None:
        """C{model} is no longer observed here: drop what waits for it."""
        for key in [k for k in self.pending if k[0] is model]:
            del self.pending[key]

    def hold(self, model: IUpdateSource, observer: Any, name: str, value: Any) -> None:
        """Keep C{model.name = value} until the peer catches up."""
        self.pending[(model, name)] = (observer, value)
        lag = self.clock.seconds() - self.since
        if len(self.pending) > self.maxPending or lag > self.maxLag:
            self.broker.peerLog.warn(
                ("slow", id(self)),
                "{peer} is {lag:.1f} s and {n} updates behind; disconnecting it",
                peer=self.broker.peer, lag=lag, n=len(self.pending))
            self._clear()
            self.broker.transport.abortConnection()
