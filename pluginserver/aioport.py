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

What a connection writes is sent when the loop's turn has run every read
it found ready (L{WriteBatch}), not at once: one system call per answer
either way, but the answers of one turn leave back to back.  A client
woken by the first finds the next ones already there instead of going back
to sleep between them, and waking a process on another CPU is the dearest
part of a write (an inter-processor interrupt; on a virtual machine, an
exit to the hypervisor).  Twisted's own TCP transport sends on the next
turn too.  Measured with C{wrk -t1 -c32} on /hello, interleaved with the
ceiling: 20-23 us of user and 9-12 us of system CPU per request, against
26-37 and 15-20 sent at once; 2.7x-3.4x the ceiling's requests a second
against 1.9x-2.4x.
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
      - C{write} hands the loop the data, which it sends and buffers; a
        registered streaming producer is paused while the buffer is over
        the loop's high-water mark (C{pause_writing}) and resumed when it is
        under its low-water mark again; it is stopped when the connection
        is lost.
      - C{pauseProducing}/C{resumeProducing} stop and restart reading.
      - C{loseConnection} closes once the buffer is sent;
        C{abortConnection} closes now; C{loseWriteConnection} sends a FIN
        after the buffer and keeps reading.
      - The client's FIN is C{readConnectionLost} for a half-closeable
        protocol; anything else closes the connection, as Twisted does.
      - An exception out of the protocol is logged and ends the connection,
        with that failure as the reason, as Twisted's reactor does.
    """

    disconnecting = False
    connected = False
    _producer: Any = None
    # Why the connection ended, when the protocol raised.
    _reason: Failure | None = None
    # loseWriteConnection was called: writes are dropped, as Twisted does.
    _writeClosed = False
    # An asyncio.Transport (uvloop's does not derive from it).
    _transport: Any

    def __init__(self, factory: Factory, batch: WriteBatch) -> None:
        self._factory = factory
        self._batch = batch
        # What was written this turn of the loop and not yet handed to the
        # loop's transport (see WriteBatch), and its size.
        self._unsent: list[bytes] | None = None
        self._unsentSize = 0

    # -- the loop's side ---------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport
        try:
            sock = transport.get_extra_info("socket")
            family = sock.family if sock is not None else socket.AF_INET
            # uvloop asks the socket for its peer only now: a client that
            # has already reset has none (Twisted has it from accept()).
            peer = transport.get_extra_info("peername")
            if peer is None:
                if sock is None:
                    raise OSError("no peer")
                peer = sock.getpeername()
            self._peer = _address(peer, family)
            self._host = _address(transport.get_extra_info("sockname"), family)
            protocol = self._factory.buildProtocol(cast(IAddress, self._peer))
            if protocol is None:
                transport.close()
                return
            self.protocol: Any = protocol
            self.connected = True
            protocol.makeConnection(cast(ITransport, self))
        except OSError:
            self._transport.abort()  # gone already: nothing to serve
        except Exception:
            log.failure("Setting up a connection failed")
            self._failed()

    def data_received(self, data: bytes) -> None:
        try:
            self.protocol.dataReceived(data)
        except Exception:
            log.failure("Unhandled error in {protocol}.dataReceived", protocol=self.protocol)
            self._failed()

    def eof_received(self) -> bool:
        if not IHalfCloseableProtocol.providedBy(self.protocol):
            self.flush()  # the loop closes it, after sending what it holds
            return False
        try:
            self.protocol.readConnectionLost()
        except Exception:
            log.failure("Unhandled error in {protocol}.readConnectionLost", protocol=self.protocol)
            self._failed()
        return True  # kept open for the answer

    def _failed(self) -> None:
        """
        The protocol raised: end the connection with that failure as the
        reason, as Twisted's reactor does.
        """
        self._reason = Failure()
        self.abortConnection()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.connected:
            return
        self.connected = False
        self.disconnecting = True
        self._unsent = None  # nowhere to send it
        # As Twisted's transport does: the producer writing an answer stops
        # before the protocol hears of the loss.
        producer, self._producer = self._producer, None
        if producer is not None:
            try:
                producer.stopProducing()
            except Exception:
                log.failure("Stopping {producer} failed", producer=producer)
        reason = self._reason
        if reason is None:
            reason = Failure(ConnectionDone() if exc is None else ConnectionLost(str(exc)))
        try:
            self.protocol.connectionLost(reason)
        except Exception:
            log.failure("Unhandled error in {protocol}.connectionLost", protocol=self.protocol)

    def pause_writing(self) -> None:
        if self._producer is not None:
            self._producer.pauseProducing()

    def resume_writing(self) -> None:
        if self._producer is not None:
            self._producer.resumeProducing()

    # -- the Twisted protocol's side: ITransport ---------------------------------

    def write(self, data: bytes) -> None:
        """
        Send C{data} when this turn of the loop has done its reads (see
        L{WriteBatch}), or at once past L{SEND_NOW} bytes: the loop's
        transport, not this list, holds what the client is slow to take,
        and pauses the producers while it is full.
        """
        if self.disconnecting or self._writeClosed:
            return
        unsent = self._unsent
        if unsent is None:
            self._unsent = [data]
            self._unsentSize = len(data)
            self._batch.add(self)
        else:
            unsent.append(data)
            self._unsentSize += len(data)
        if self._unsentSize > SEND_NOW:
            self.flush()

    def writeSequence(self, data: list[bytes]) -> None:
        for piece in data:
            self.write(piece)

    def flush(self) -> None:
        """
        Hand the loop's transport what was written and not yet sent.
        """
        unsent = self._unsent
        if unsent is None:
            return
        self._unsent = None
        if not self._transport.is_closing():
            self._transport.write(unsent[0] if len(unsent) == 1 else b"".join(unsent))

    def loseConnection(self) -> None:
        self.flush()
        self.disconnecting = True
        self._transport.close()

    def abortConnection(self) -> None:
        self._unsent = None
        self.disconnecting = True
        self._transport.abort()

    def loseWriteConnection(self) -> None:
        if self._writeClosed:
            return
        self.flush()
        self._writeClosed = True
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


SEND_NOW = 65536
"""Bytes a connection keeps unsent until the end of the loop's turn; more
are handed to the loop's transport at once (its own high-water mark)."""


class WriteBatch:
    """
    The connections that wrote during this turn of the loop, flushed by a
    call the loop makes once the turn's ready reads have run: the loop runs
    the callbacks of C{call_soon} after the I/O callbacks of its turn
    (uvloop in its idle phase, the standard loop on its next pass).
    """

    def __init__(self, loop: Any) -> None:
        self._loop = loop
        self._waiting: list[AsyncioConnection] = []

    def add(self, connection: AsyncioConnection) -> None:
        """
        Flush C{connection} at the end of this turn.
        """
        if not self._waiting:
            self._loop.call_soon(self.flush)
        self._waiting.append(connection)

    def flush(self) -> None:
        """
        Flush every connection that wrote since the last flush (the loop
        calls this at the end of the turn; the reactor when it shuts down,
        as a stopping loop runs no more callbacks).  A connection whose
        send fails is aborted; the others are sent.
        """
        waiting, self._waiting = self._waiting, []
        for connection in waiting:
            try:
                connection.flush()
            except Exception:
                log.failure("Sending to {peer} failed", peer=connection.getPeer())
                connection.abortConnection()


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

    def __init__(self, reactor: Any, port: Port, factory: Factory, backlog: int) -> None:
        self._reactor = reactor
        self._port = port
        self._factory = factory
        self._backlog = backlog
        self._listening = socket.socket(
            port.addressFamily, socket.SOCK_STREAM, fileno=os.dup(port.fileno())
        )
        self._listening.setblocking(False)
        # Started from the running loop (the reactor may not run yet).
        self._call: Any = reactor.callLater(0, self._start)

    def _start(self) -> None:
        self._call = None
        loop = asyncio.get_running_loop()
        factory = self._factory
        batch = WriteBatch(loop)
        # What the last turn before the loop stops wrote (a stream's end, a
        # last answer) is sent: the stopping loop would not call the batch.
        # For the reactor's life: the connections outlive the listener.
        self._reactor.addSystemEventTrigger("during", "shutdown", batch.flush)
        # The loop listens on the socket again, with its own default backlog
        # unless told: the configured one.
        task = loop.create_task(
            loop.create_server(
                lambda: AsyncioConnection(factory, batch),
                sock=self._listening,
                backlog=self._backlog,
            )
        )
        task.add_done_callback(self._started)

    def _started(self, task: asyncio.Task[asyncio.AbstractServer]) -> None:
        failed = task.exception()
        if failed is not None:
            log.failure(
                "The loop cannot accept connections on {port}; Twisted's transports will",
                Failure(failed),
                port=self._port.getHost(),
            )
            self._listening.close()
            if not self._stopped:
                self._port.startReading()
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


def serve(reactor: Any, port: Port, factory: Factory, backlog: int) -> Serving:
    """
    Accept the connections of C{port}, a bound Twisted TCP port that is not
    reading (and stays so), with the asyncio loop of C{reactor}, and carry
    each to a protocol of C{factory} over an L{AsyncioConnection}.  The
    port keeps its socket; the loop serves a copy, which L{Serving.stop}
    closes, and listens on it with C{backlog}.
    """
    return Serving(reactor, port, factory, backlog)
