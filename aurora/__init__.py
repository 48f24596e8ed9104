"""
aurora: a distributed object registry on Twisted Perspective Broker.

Managers are registered under zope interfaces in a L{Registry}; a L{Server}
publishes it, a L{Client} gets it back as a remote registry whose managers,
copies and models behave like the local ones.

Importable from here: the classes above; L{Manager}, L{Copyable} and
L{Model} to derive from; L{Relay}; L{registerWrapper} and L{registerMirror}
(with L{Wrapper}); L{noReplay} and L{referenceError}.  The exceptions are in
L{aurora.errors}, the signals in L{aurora.signals}, logins in L{aurora.auth}.
Modules whose names start with an underscore are internal.
"""

from aurora import errors, signals
from aurora._copyable import Copyable
from aurora._manager import Manager
from aurora._model import Model
from aurora._version import __version__
from aurora._wrapper import Wrapper, noReplay, referenceError, registerMirror, registerWrapper
from aurora.client import Client
from aurora.registry import Registry
from aurora.relay import Relay
from aurora.server import Server

__all__ = [
    "Client",
    "Copyable",
    "Manager",
    "Model",
    "Registry",
    "Relay",
    "Server",
    "Wrapper",
    "errors",
    "noReplay",
    "referenceError",
    "registerMirror",
    "registerWrapper",
    "signals",
    "__version__",
]
