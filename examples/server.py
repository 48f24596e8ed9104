"""
Serve the example UserManager: python examples/server.py [ENDPOINT]

ENDPOINT is a Twisted server endpoint string; the default listens on
127.0.0.1:8789.  Prints "listening on PORT" once it serves.
"""

from __future__ import annotations

import sys

from twisted.internet import defer, task
from twisted.logger import globalLogBeginner, textFileLogObserver

from aurora import Registry, Server
from users import IUserManager, UserManager


async def main(reactor, endpoint: str = "tcp:8789:interface=127.0.0.1") -> None:
    globalLogBeginner.beginLoggingTo([textFileLogObserver(sys.stderr)],
                                     redirectStandardIO=False)
    manager = UserManager()
    await manager.setUp()
    registry = Registry()
    registry.register(IUserManager, manager)
    port = await Server(registry).listen(endpoint)
    print(f"listening on {port.getHost().port}", flush=True)
    await defer.Deferred()  # until the process is stopped


if __name__ == "__main__":
    task.react(lambda reactor: defer.ensureDeferred(main(reactor, *sys.argv[1:])))
