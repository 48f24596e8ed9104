"""--setup callables for the twistd tests."""

from __future__ import annotations

from twisted.application import service
from twisted.internet import defer, reactor, task
from twisted.logger import Logger
from zope.interface import Interface, implementer

from aurora import Manager
from tests.app import IAdmin, IUserManager, UserManager


class IPoller(Interface):
    def polls():
        """How many times it polled."""


@implementer(IPoller, service.IService)
class Poller(Manager, service.Service):
    """A manager with a life cycle, like one polling a data source."""

    log = Logger()

    def __init__(self):
        self.count = 0
        self.loop = task.LoopingCall(self.poll)

    def poll(self):
        self.count += 1

    def polls(self):
        return self.count

    def startService(self):
        service.Service.startService(self)
        self.log.info("poller started")
        self.loop.start(0.1)

    def stopService(self):
        service.Service.stopService(self)
        self.loop.stop()
        # Stopping takes a moment (flushing, closing a pool): awaited.
        return task.deferLater(reactor, 0.05, lambda: self.log.info("poller stopped"))


def register(registry):
    manager = UserManager()
    registry.register(IUserManager, manager)
    registry.register(IAdmin, manager.admin)
    registry.register(IPoller, Poller())


async def registerLater(registry):
    await task.deferLater(reactor, 0.01, lambda: None)
    registry.register(IAdmin, UserManager().admin)


def broken(registry):
    raise ValueError("the database is not there")


def brokenLater(registry):
    return defer.fail(RuntimeError("late failure"))
