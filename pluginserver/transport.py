# -*- test-case-name: tests.test_transport -*-
"""
The TCP transport of the server's listeners: Twisted's, sending what the
handling of one read wrote in one go, at the end of that read, without
waiting for the next turn of the loop when the socket takes it all.

Twisted's transport registers for writability on every write and sends on
the next turn of the loop.  For an answer that fits in the socket's buffer
(nearly every answer) that is a registration and an unregistration per
response: cheap on the epoll reactor, but on the asyncio reactor each is a
uvloop poll-handle update, which the profile of a trivial request showed
at 7% of its time.  Here a write made while a read is being handled (the
request parsed, the plugin answered: everything a synchronous plugin does)
only marks the transport for a flush; when the read has been handled, the
buffer is written at once, and only what the socket did not take waits for
writability, as before.  Writes made at any other time (asynchronous
plugins, streams) go Twisted's usual way.  Everything written in one read
still goes out in one C{send}, so small answers are not split into
segments (Nagle's algorithm would hold the second).
"""

from __future__ import annotations

from typing import Any

from twisted.internet import tcp


class BatchingServer(tcp.Server):
    """
    A TCP server transport that flushes at the end of each read what was
    written while handling it.
    """

    _handlingRead = False
    _flushWanted = False
    _drained = False

    def doRead(self) -> Any:
        self._handlingRead = True
        try:
            why = super().doRead()
        finally:
            self._handlingRead = False
        if self._flushWanted:
            self._flushWanted = False
            if why is not None or self.disconnecting or self._writeDisconnecting:
                # Closing, or closed: Twisted's own path does it right.
                super().startWriting()
            else:
                self._flush()
        return why

    def startWriting(self) -> None:
        if self._handlingRead:
            self._flushWanted = True
            return
        super().startWriting()

    def stopWriting(self) -> None:
        self._drained = True
        super().stopWriting()

    def _flush(self) -> None:
        """
        Write the buffer now; register for writability only if the socket
        did not take it all (or failed: the reactor then ends the
        connection as it would have).
        """
        self._drained = False
        why = self.doWrite()
        if why is not None or not self._drained:
            super().startWriting()


def batch_writes(port: Any) -> None:
    """
    Make the connections C{port} accepts from now on use L{BatchingServer},
    when C{port} is a TCP port (an C{ssl:} listener is one too: TLS runs
    above the transport); other ports are left as they are.
    """
    if isinstance(port, tcp.Port) and port.transport is tcp.Server:
        port.transport = BatchingServer


__all__ = ["BatchingServer", "batch_writes"]
