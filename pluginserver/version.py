# -*- test-case-name: tests.test_tap -*-
"""
The version of pluginserver: the installed distribution's, so that it is
written in one place only (setup.py).
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as distribution_version

UNKNOWN = "unknown"
"""The version reported when pluginserver runs without being installed."""


def version() -> str:
    """
    pluginserver's version, from the installed distribution's metadata, or
    L{UNKNOWN} when it runs from a source tree that was never installed
    (its metadata is what pip writes; the code alone carries none).
    """
    try:
        return distribution_version("pluginserver")
    except PackageNotFoundError:
        return UNKNOWN
