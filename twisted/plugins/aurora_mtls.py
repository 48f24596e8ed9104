# The `mtls:` server endpoint string: TLS that requires a client certificate
# signed by a given CA (Twisted's `ssl:` cannot).  See aurora.auth.
from typing import Any

from twisted.internet.interfaces import IStreamServerEndpointStringParser
from twisted.plugin import IPlugin
from zope.interface import implementer


@implementer(IPlugin, IStreamServerEndpointStringParser)
class _MutualTLSParser:
    prefix = "mtls"

    def parseStreamServer(self, reactor: Any, *args: Any, **kwargs: Any) -> Any:
        from aurora.auth import mutualTLSEndpoint

        return mutualTLSEndpoint(reactor, *args, **kwargs)


mtls = _MutualTLSParser()
