"""
The test application's server, as a process of its own:

    python -m tests.serve ENDPOINT [--online NAME]... [--no-admin] [--reverse]

Prints "listening on PORT" when it serves.
"""

from __future__ import annotations

import argparse

from twisted.internet import defer, task

from aurora import Registry, Server
from tests.app import IAdmin, IUserManager, UserManager


async def main(reactor, argv=None) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("endpoint")
    parser.add_argument("--online", action="append", default=[])
    parser.add_argument("--no-admin", action="store_true")
    parser.add_argument("--reverse", action="store_true")
    args = parser.parse_args(argv)
    manager = UserManager(online=args.online, reverse=args.reverse)
    registry = Registry()
    registry.register(IUserManager, manager)
    if not args.no_admin:
        registry.register(IAdmin, manager.admin)
    port = await Server(registry).listen(args.endpoint)
    print(f"listening on {port.getHost().port}", flush=True)
    await defer.Deferred()


if __name__ == "__main__":
    task.react(lambda reactor: defer.ensureDeferred(main(reactor)))
