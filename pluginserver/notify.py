# -*- test-case-name: tests.test_service -*-
"""
Tell systemd how the service is doing (sd_notify(3)), for units of
C{Type=notify}: C{READY=1} once the server serves, C{RELOADING=1} and
C{READY=1} around a SIGHUP reload, C{STOPPING=1} when it stops.

The protocol is one datagram of C{KEY=VALUE} lines to the unix socket named
by C{$NOTIFY_SOCKET}; outside systemd that variable is unset and nothing is
sent.  (The standard library has no sd_notify, and the protocol is a few
lines: not worth a dependency.)
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping


def notify_systemd(*states: str, environ: Mapping[str, str] | None = None) -> bool:
    """
    Send C{states} (C{"READY=1"}, ...) to systemd, if it asked for them.

    @param environ: where C{NOTIFY_SOCKET} is looked up; L{os.environ}
        when not given.
    @return: whether anything was sent.
    @raise OSError: the socket named could not be reached.
    """
    address = (os.environ if environ is None else environ).get("NOTIFY_SOCKET")
    if not address or not states:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]  # a Linux abstract socket
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
        # A datagram to a local socket: it does not block the reactor.
        sock.sendto("\n".join(states).encode("utf-8"), address)
    return True
