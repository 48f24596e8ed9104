# The twistd plugin: `twistd registry --help`.  No __init__.py beside this
# file or in twisted/: twisted.plugins is Twisted's own package.
from twisted.application.service import ServiceMaker

registry = ServiceMaker(
    "Aurora registry",
    "aurora.tap",
    "An aurora registry server or relay (Perspective Broker)",
    "registry",
)
