"""A stock PB echo server, for baselines: python benchmarks/_rawpb.py"""

from twisted.internet import defer, task
from twisted.spread import pb


class Echo(pb.Root):
    def remote_echo(self, value):
        return value


async def main(reactor):
    port = reactor.listenTCP(0, pb.PBServerFactory(Echo()), interface="127.0.0.1")
    print(f"listening on {port.getHost().port}", flush=True)
    await defer.Deferred()


if __name__ == "__main__":
    task.react(lambda reactor: defer.ensureDeferred(main(reactor)))
