"""
twistd dropin: makes C{twistd pluginserver} available.
"""

from twisted.application.service import ServiceMaker

pluginserver = ServiceMaker(
    "pluginserver",
    "pluginserver.tap",
    "A JSON API server whose routes are Python plugins, reloaded while it runs.",
    "pluginserver",
)
