"""
The three kinds of object that travel: L{Manager} by reference, L{Copyable}
by value, L{Model} as a live mirror.

Write each class once: aurora derives what goes over the wire from the zope
interfaces a manager implements and the C{fields} a Copyable or Model
declares.  There is no C{remote_*} boilerplate and no hand-written mirror
class.

This module is the public entry point; each kind lives in a module of its
own: L{aurora._manager} (a manager, and how a call to it is served),
L{aurora._copyable} (L{Copyable}, and L{OpaqueCopy} for a relay),
L{aurora._model} (L{Model}, its mirrors' L{Subscription}, and L{OpaqueModel}
for a relay).
"""

from aurora._copyable import Copyable, OpaqueCopy
from aurora._manager import Manager
from aurora._model import Model, OpaqueModel, Subscription

__all__ = [
    "Copyable",
    "Manager",
    "Model",
    "OpaqueCopy",
    "OpaqueModel",
    "Subscription",
]
