"""Twisted endpoint plugin: ``bbenroll:furlfile=PATH`` for buildbot-worker's connection_string.

Kept tiny and free of imports beyond Twisted: Twisted imports every plugin
module when it scans for endpoint parsers.
"""

from twisted.internet.interfaces import IStreamClientEndpointStringParserWithReactor
from twisted.plugin import IPlugin
from zope.interface import implementer


@implementer(IPlugin, IStreamClientEndpointStringParserWithReactor)
class BBEnrollEndpointParser:
    prefix = "bbenroll"

    def parseStreamClient(self, reactor, *args, **kwargs):
        from bbenroll.tunnel.worker_side import endpoint_from_string

        return endpoint_from_string(reactor, *args, **kwargs)


bbenroll_endpoint_parser = BBEnrollEndpointParser()
