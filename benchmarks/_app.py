"""
What the benchmark servers serve: the same small application twice, once as
aurora managers, copies and models, once as stock PB (a C{pb.Root} with
C{remote_*} methods, a C{pb.Copyable}, a C{pb.Cacheable}), so every figure
has a baseline measured on the same calls.
"""

from __future__ import annotations

import gc
import tracemalloc

from twisted.spread import pb
from zope.interface import Interface, implementer

from aurora import Copyable, Manager, Model


def rss() -> int:
    """This process's resident memory in bytes (Linux)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def traced() -> int:
    """Bytes tracemalloc sees allocated now, after a full collection (0 if off)."""
    gc.collect()
    return tracemalloc.get_traced_memory()[0] if tracemalloc.is_tracing() else 0


# -- aurora

class IBench(Interface):
    def echo(value):
        """C{value}, sent back."""

    def getBlob(size):
        """A Blob carrying C{size} bytes."""

    def getCounter():
        """The live Counter model."""

    def churn(count):
        """Change the Counter C{count} times, as fast as possible; its last value."""

    def prepare(count):
        """Build C{count} Items and C{count} Counters to hand out later."""

    def getItems():
        """The prepared Items (managers)."""

    def getCounters():
        """The prepared Counters (models)."""

    def memory():
        """{"rss": bytes, "traced": bytes} of the server process."""


class IItem(Interface):
    def ping():
        """pong"""


class Blob(Copyable):
    fields = ("name", "data")


class Counter(Model):
    fields = ("value",)


@implementer(IItem)
class Item(Manager):
    def ping(self) -> str:
        return "pong"


@implementer(IBench)
class Bench(Manager):
    def __init__(self) -> None:
        self.counter = Counter(value=0)
        self.blobs: dict[int, Blob] = {}
        self.items: list[Item] = []
        self.counters: list[Counter] = []

    def echo(self, value):
        return value

    def getBlob(self, size):
        if size not in self.blobs:
            self.blobs[size] = Blob(name="blob", data=b"x" * size)
        return self.blobs[size]

    def getCounter(self):
        return self.counter

    def churn(self, count):
        for _ in range(count):
            self.counter.value += 1
        return self.counter.value

    def prepare(self, count):
        self.items = [Item() for _ in range(count)]
        self.counters = [Counter(value=i) for i in range(count)]
        return count

    def getItems(self):
        return self.items

    def getCounters(self):
        return self.counters

    def memory(self):
        return {"rss": rss(), "traced": traced()}


# -- stock PB, the baseline

class RawBlob(pb.Copyable, pb.RemoteCopy):
    def __init__(self, name: str = "", data: bytes = b"") -> None:
        self.name = name
        self.data = data


pb.setUnjellyableForClass(RawBlob, RawBlob)


class RawCounter(pb.Cacheable):
    def __init__(self) -> None:
        self.value = 0
        self.observers: list = []

    def getStateToCacheAndObserveFor(self, perspective, observer):
        self.observers.append(observer)
        return {"value": self.value}

    def stoppedObserving(self, perspective, observer):
        # A new observer object for the same connection (its __cmp__ means
        # nothing on Python 3, Twisted #9671).
        self.observers = [o for o in self.observers if o.broker is not observer.broker]

    def set(self, value: int) -> None:
        self.value = value
        for observer in self.observers:
            observer.callRemote("set", value)


class RawCounterMirror(pb.RemoteCache):
    onSet = None  # the benchmark client sets a function(mirror, value)

    def setCopyableState(self, state):
        self.value = state["value"]

    def observe_set(self, value):
        self.value = value
        if RawCounterMirror.onSet is not None:
            RawCounterMirror.onSet(self, value)


pb.setUnjellyableForClass(RawCounter, RawCounterMirror)


class RawBench(pb.Root):
    def __init__(self) -> None:
        self.counter = RawCounter()
        self.blobs: dict[int, RawBlob] = {}

    def remote_echo(self, value):
        return value

    def remote_getBlob(self, size):
        if size not in self.blobs:
            self.blobs[size] = RawBlob("blob", b"x" * size)
        return self.blobs[size]

    def remote_getCounter(self):
        return self.counter

    def remote_churn(self, count):
        counter = self.counter
        for _ in range(count):
            counter.set(counter.value + 1)
        return counter.value

    def remote_memory(self):
        return {"rss": rss(), "traced": traced()}
