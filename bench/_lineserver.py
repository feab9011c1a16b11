"""Baseline for the benchmarks: the least a Twisted line server can do.

A bare ``LineReceiver`` that greets each connection with ``* HELLO baseline``
and answers every line ``<VERB> ...`` with ``OK <line>``: the same exchange of
lines the chat server has, with none of its work.  It holds idle connections
(the memory floor) and echoes requests (the throughput ceiling).

Run as ``python bench/_lineserver.py [--no-tls | --twisted-tls] [PORT]``; it serves TLS 1.3 (a fresh ECDSA P-256
certificate, the chat server's context) like ``twistd chatserver`` does by default, and logs the port it listens on in
the same words as ``twistd chatserver`` so the benchmarks can find it.  ``--twisted-tls`` builds the context with
Twisted's own ``CertificateOptions`` instead (TLS 1.3 only): what a Twisted server gets by default.
"""

from __future__ import annotations

import resource
import sys
from pathlib import Path

from twisted.internet import reactor
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.interfaces import IListeningPort
from twisted.internet.protocol import Factory
from twisted.protocols.basic import LineReceiver


class EchoLine(LineReceiver):
    delimiter = b"\n"
    MAX_LENGTH = 4096

    def connectionMade(self) -> None:
        assert self.transport is not None
        self.transport.write(b"* HELLO baseline\r\n")

    def lineReceived(self, line: bytes) -> None:
        if line:
            assert self.transport is not None
            self.transport.write(b"OK " + line.rstrip(b"\r") + b"\r\n")


def main() -> None:
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    argv = sys.argv[1:]
    tls = "--no-tls" not in argv
    twisted_tls = "--twisted-tls" in argv
    argv = [a for a in argv if a not in ("--no-tls", "--twisted-tls")]
    port = int(argv[0]) if argv else 0
    factory: Factory = Factory.forProtocol(EchoLine)
    if tls:  # the same wrapping as chatapp.server.tap: a TLSMemoryBIOFactory around the line factory
        sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
        from twisted.protocols.tls import TLSMemoryBIOFactory

        from chatapp.tls.contexts import ServerLinkServerTLS
        from chatapp.tls.identity import new_identity

        identity = new_identity("lineserver")
        creator: object = ServerLinkServerTLS(identity)
        if twisted_tls:
            from OpenSSL import crypto
            from twisted.internet.ssl import CertificateOptions, TLSVersion

            creator = CertificateOptions(
                privateKey=crypto.PKey.from_cryptography_key(identity.private_key),
                certificate=crypto.X509.from_cryptography(identity.certificate),
                raiseMinimumTo=TLSVersion.TLSv1_3,
            )
        factory = TLSMemoryBIOFactory(creator, False, factory)
    endpoint = TCP4ServerEndpoint(reactor, port, backlog=1024, interface="127.0.0.1")

    def listening(p: IListeningPort) -> None:
        print(f"lineserver listening on {p.getHost()}", flush=True)

    endpoint.listen(factory).addCallback(listening)
    reactor.run()


if __name__ == "__main__":
    main()
