"""
L{pluginserver.transport}: over real TCP connections on 127.0.0.1, what a
read's handling writes is sent at the end of that read, without
registering the connection for writability when the socket takes it all;
everything still arrives, in order, and closing still closes.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer, reactor
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Factory, Protocol
from twisted.trial.unittest import TestCase

from pluginserver.transport import BatchingServer, batch_writes
from tests.test_registry import until

BIG = 8 * 1024 * 1024  # far more than a socket buffer takes at once


class Server(Protocol):
    """
    Answers each read by what it asks: C{echo} writes the data back in two
    writes, C{big} writes L{BIG} bytes, C{close} writes and closes,
    C{later} writes on the next turn of the loop.  Records whether the
    transport was registered for writability right after its writes.
    """

    registered: list[bool]

    def connectionMade(self) -> None:
        self.registered = self.factory.registered  # type: ignore[attr-defined]

    def dataReceived(self, data: bytes) -> None:
        if data == b"big":
            self.transport.write(b"x" * BIG)  # type: ignore[union-attr]
        elif data == b"close":
            self.transport.write(b"bye")  # type: ignore[union-attr]
            self.transport.loseConnection()  # type: ignore[union-attr]
        elif data == b"later":
            reactor.callLater(0, self.transport.write, b"late")  # type: ignore[attr-defined,union-attr]
        else:
            self.transport.write(data[:2])  # type: ignore[union-attr]
            self.transport.write(data[2:])  # type: ignore[union-attr]
        self.registered.append(self.transport in reactor.getWriters())  # type: ignore[attr-defined]


class Client(Protocol):
    def __init__(self) -> None:
        self.received = b""
        self.closed: defer.Deferred[None] = defer.Deferred()

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def connectionLost(self, reason: Any = None) -> None:
        self.closed.callback(None)


class BatchingTests(TestCase):
    @defer.inlineCallbacks
    def setUp(self) -> Any:
        factory = Factory.forProtocol(Server)
        factory.registered = []  # type: ignore[attr-defined]
        self.registered: list[bool] = factory.registered  # type: ignore[attr-defined]
        self.port = reactor.listenTCP(0, factory, interface="127.0.0.1")  # type: ignore[attr-defined]
        self.addCleanup(self.port.stopListening)
        batch_writes(self.port)
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", self.port.getHost().port)
        self.client = yield connectProtocol(endpoint, Client())
        self.addCleanup(self.disconnect)

    def disconnect(self) -> Any:
        if self.client.transport is not None and self.client.transport.connected:
            self.client.transport.loseConnection()
            return self.client.closed
        return None

    def test_batchingIsForTCPPortsOnly(self) -> None:
        self.assertIs(self.port.transport, BatchingServer)
        other: Any = object()
        batch_writes(other)  # not a TCP port: left alone

    @defer.inlineCallbacks
    def test_answerSentAtTheEndOfTheRead(self) -> Any:
        """
        Two writes in one read arrive, in order, and the connection was not
        registered for writability to send them.
        """
        for n in range(3):
            self.client.transport.write(b"hello %d" % (n,))
            yield until(lambda n=n: self.client.received.endswith(b"hello %d" % (n,)))
        self.assertEqual(self.client.received, b"hello 0hello 1hello 2")
        self.assertEqual(self.registered, [False, False, False])

    @defer.inlineCallbacks
    def test_whatTheSocketDoesNotTakeWaits(self) -> Any:
        """
        An answer larger than the socket takes at once: the rest waits for
        writability, as with Twisted's own transport, and all of it
        arrives.
        """
        self.client.transport.write(b"big")
        yield until(lambda: len(self.client.received) == BIG, timeout=30)
        self.assertEqual(self.client.received, b"x" * BIG)

    @defer.inlineCallbacks
    def test_writeThenCloseInOneRead(self) -> Any:
        """
        Written and closed in one read: the client gets the data, then the
        end of the connection.
        """
        self.client.transport.write(b"close")
        yield self.client.closed
        self.assertEqual(self.client.received, b"bye")

    @defer.inlineCallbacks
    def test_writesOutsideAReadAreSentAsUsual(self) -> Any:
        self.client.transport.write(b"later")
        yield until(lambda: self.client.received == b"late")
