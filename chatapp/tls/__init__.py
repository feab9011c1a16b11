"""TLS building blocks for protocol version 2 (docs: PROTOCOL.md section 4).

Self-contained pieces that the server, client and peer code wire in:

- ``fingerprint``: ``sha256:<hex>`` names of public keys, parsed and compared in constant time.
- ``private_files``: 0600 files written atomically, 0700 folders, advisory locks.
- ``paths``: where identities, known servers and known peers live (XDG folders).
- ``identity``: an ECDSA P-256 key and self-signed certificate in one PEM file; load, create, load-or-create.
- ``known_hosts``: the known-servers and known-peers files (parse, look up, add or replace under a lock).
- ``contexts``: OpenSSL connection creators for ``TLSMemoryBIOFactory`` / ``wrapClientTLS``, TLS 1.3 only.
- ``server_trust``: the client's decision about a server certificate after the handshake (a typed verdict).
- ``transports``: the peer's fingerprint and the TCP transport under a TLS wrapper.

Nothing here imports the rest of chatapp, so any part of it can use these modules.
"""
