"""Twisted endpoint plugin: ``bbenroll:furlfile=PATH`` for buildbot-worker's connection_string.

Kept tiny and free of imports beyond Twisted: Twisted imports every plugin
module when it scans for endpoint parsers. The parser instance owns the
process's tunnel table (one tunnel per FURL), made on first use.
"""

from twisted.internet.interfaces import IStreamClientEndpointStringParserWithReactor
from twisted.plugin import IPlugin
from zope.interface import implementer


@implementer(IPlugin, IStreamClientEndpointStringParserWithReactor)
class BBEnrollEndpointParser:
    prefix = "bbenroll"

    def __init__(self):
        self.tunnels = None  # a bbenroll.tunnel.endpoint.TunnelTable, once a string is parsed

    def parseStreamClient(self, reactor, *args, **kwargs):
        from bbenroll.tunnel.endpoint import TunnelTable, endpoint_from_string

        if self.tunnels is None:
            self.tunnels = TunnelTable()
        return endpoint_from_string(self.tunnels, reactor, *args, **kwargs)


bbenroll_endpoint_parser = BBEnrollEndpointParser()
