# -*- test-case-name: tests.test_aioport -*-
"""
Connections of a listening TCP port carried by the asyncio loop's own
transports (uvloop's, in C), for a Twisted protocol.

On Twisted's asyncio reactor every read of a Twisted TCP connection goes
through the reactor's Python dispatch (a context, a logger, the
selectable's C{doRead}, then C{dataReceived}), and every answer through
the transport's write buffer.  uvloop does the same in C.  Measured with
C{wrk -t1 -c32} against a bare protocol that parses with httptools and
answers a constant: about 20,000 requests a second over Twisted's TCP
transport (28 us of user CPU per request), about 80,000 over uvloop's
(2.5 us).  So a C{tcp:} or C{ssl:} listener keeps what Twisted gives it
(the endpoint string, binding, the backlog, IPv6, a worker's adopted
socket, and TLS: the port's factory wraps the site in Twisted's TLS
protocol), and only its accepting and its connections are handed to the
loop: L{serve} takes the bound, paused Twisted port; L{AsyncioConnection}
gives the port's protocol each connection as an C{ITCPTransport}.  A
C{unix:} listener, or another reactor, keeps Twisted's transports.
"""

from __future__ import annotations

import asyncio
import os
import socket
from typing import Any, cast

from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.asyncioreactor import AsyncioSelectorReactor
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.interfaces import (
    IAddress,
    IConsumer,
    IHalfCloseableProtocol,
    IPushProducer,
    ITCPTransport,
    ITransport,
)
from twisted.internet.protocol import Factory
from twisted.internet.tcp import Port
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer  # type: ignore[import-untyped]

log = Logger()

Address = IPv4Address | IPv6Address


def _address(sockaddr: Any, family: int) -> Address:
    if family == socket.AF_INET6:
        return IPv6Address("TCP", sockaddr[0], sockaddr[1])
    return IPv4Address("TCP", sockaddr[0], sockaddr[1])


@implementer(ITCPTransport, IConsumer, IPushProducer)
class AsyncioConnection(asyncio.Protocol):
    """
    One accepted connection: an asyncio protocol to the loop, and to the
    Twisted protocol it carries, its transport.

    What Twisted's TCP transport does, this does with the loop's:
      - C{write} sends at once what the socket takes, and buffers the rest;
        a registered streaming producer is paused while the buffer is over
        the loop's high-water mark (C{pause_writing}) and resumed when it
        has drained.
      - C{pauseProducing}/C{resumeProducing} stop and restart reading.
      - C{loseConnection} closes once the buffer is sent;
        C{abortConnection} closes now; C{loseWriteConnection} sends a FIN
        after the buffer and keeps reading.
      - The client's FIN is C{readConnectionLost} for a half-closeable
        protocol; anything else closes the connection, as Twisted does.
      - An exception out of C{dataReceived} is logged and ends the
        connection, as Twisted's reactor does.
    """

    disconnecting = False
    connected = False
    _producer: Any = None
    # An asyncio.Transport (uvloop's does not derive from it).
    _transport: Any

    def __init__(self, factory: Factory) -> None:
        self._factory = factory

    # -- the loop's side ---------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport
        sock = transport.get_extra_info("socket")
        family = sock.family if sock is not None else socket.AF_INET
        self._peer = _address(transport.get_extra_info("peername"), family)
        self._host = _address(transport.get_extra_info("sockname"), family)
        protocol = self._factory.buildProtocol(cast(IAddress, self._peer))
        if protocol is None:
            transport.close()
            return
        self.protocol: Any = protocol
        self.connected = True
        protocol.makeConnection(cast(ITransport, self))

    def data_received(self, data: bytes) -> None:
        try:
            self.protocol.dataReceived(data)
        except Exception:
            log.failure("Unhandled error in {protocol}.dataReceived", protocol=self.protocol)
            self.abortConnection()

    def eof_received(self) -> bool:
        if IHalfCloseableProtocol.providedBy(self.protocol):
            self.protocol.readConnectionLost()
            return True  # keep the connection open for the answer
        return False  # the loop closes it

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.connected:
            return
        self.connected = False
        self.disconnecting = True
        reason = ConnectionDone() if exc is None else ConnectionLost(str(exc))
        self.protocol.connectionLost(Failure(reason))

    def pause_writing(self) -> None:
        if self._producer is not None:
            self._producer.pauseProducing()

    def resume_writing(self) -> None:
        if self._producer is not None:
            self._producer.resumeProducing()

    # -- the Twisted protocol's side: ITransport ---------------------------------

    def write(self, data: bytes) -> None:
        if not self.disconnecting:
            self._transport.write(data)

    def writeSequence(self, data: list[bytes]) -> None:
        if not self.disconnecting:
            self._transport.writelines(data)

    def loseConnection(self) -> None:
        self.disconnecting = True
        self._transport.close()

    def abortConnection(self) -> None:
        self.disconnecting = True
        self._transport.abort()

    def loseWriteConnection(self) -> None:
        if self._transport.can_write_eof():
            self._transport.write_eof()

    def getPeer(self) -> Address:
        return self._peer

    def getHost(self) -> Address:
        return self._host

    # -- ITCPTransport -------------------------------------------------------------

    def getTcpNoDelay(self) -> bool:
        return bool(self.getHandle().getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))

    def setTcpNoDelay(self, enabled: bool) -> None:
        self.getHandle().setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, enabled)

    def getTcpKeepAlive(self) -> bool:
        return bool(self.getHandle().getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE))

    def setTcpKeepAlive(self, enabled: bool) -> None:
        self.getHandle().setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, enabled)

    def getHandle(self) -> Any:
        return self._transport.get_extra_info("socket")

    # -- IPushProducer: reading ------------------------------------------------------

    def pauseProducing(self) -> None:
        if not self._transport.is_closing():
            self._transport.pause_reading()

    def resumeProducing(self) -> None:
        if not self._transport.is_closing():
            self._transport.resume_reading()

    def stopProducing(self) -> None:
        self.loseConnection()

    # -- IConsumer ---------------------------------------------------------------------

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        """
        Pause and resume C{producer} as the write buffer fills and drains.
        Only a streaming (push) producer: every producer of this server's
        connections is one.
        """
        if not streaming:
            raise ValueError("AsyncioConnection takes streaming producers only")
        if self._producer is not None:
            raise RuntimeError(f"Cannot register producer {producer}: one is registered")
        self._producer = producer
        if self._transport.get_write_buffer_size() > self._transport.get_write_buffer_limits()[1]:
            producer.pauseProducing()

    def unregisterProducer(self) -> None:
        self._producer = None


def servable(reactor: Any, port: Any) -> bool:
    """
    Whether L{serve} can take over C{port}: a listening TCP port (not a
    C{unix:} one) on Twisted's asyncio reactor.
    """
    return (
        isinstance(port, Port)
        and port.addressFamily in (socket.AF_INET, socket.AF_INET6)
        and isinstance(reactor, AsyncioSelectorReactor)
    )


class Serving:
    """
    A listening port whose connections the asyncio loop accepts and
    carries (see L{serve}).
    """

    _server: asyncio.AbstractServer | None = None
    _stopped = False

    def __init__(self, reactor: Any, listening: socket.socket, factory: Factory) -> None:
        self._listening = listening
        self._factory = factory
        # Started from the running loop (the reactor may not run yet).
        self._call: Any = reactor.callLater(0, self._start)

    def _start(self) -> None:
        self._call = None
        loop = asyncio.get_running_loop()
        factory = self._factory
        task = loop.create_task(
            loop.create_server(lambda: AsyncioConnection(factory), sock=self._listening)
        )
        task.add_done_callback(self._started)

    def _started(self, task: asyncio.Task[asyncio.AbstractServer]) -> None:
        failed = task.exception()
        if failed is not None:
            log.failure("Accepting connections on a listening socket failed", Failure(failed))
            self._listening.close()
            return
        server = task.result()
        if self._stopped:
            server.close()
        else:
            self._server = server

    def stop(self) -> None:
        """
        Stop accepting, and close the loop's copy of the socket; the
        connections accepted go on.
        """
        self._stopped = True
        if self._call is not None:
            self._call.cancel()
            self._call = None
            self._listening.close()
        elif self._server is not None:
            self._server.close()
            self._server = None


def serve(reactor: Any, port: Port, factory: Factory) -> Serving:
    """
    Accept the connections of C{port}, a bound Twisted TCP port that is not
    reading (and stays so), with the asyncio loop of C{reactor}, and carry
    each to a protocol of C{factory} over an L{AsyncioConnection}.  The
    port keeps its socket; the loop serves a copy, which L{Serving.stop}
    closes.
    """
    listening = socket.socket(port.addressFamily, socket.SOCK_STREAM, fileno=os.dup(port.fileno()))
    listening.setblocking(False)
    return Serving(reactor, listening, factory)
