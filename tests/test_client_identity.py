"""One server reached under two names (``localhost`` and ``127.0.0.1``) is one server to its users' keys."""

from __future__ import annotations

from pathlib import Path

import pytest_twisted
from chat_harness import start_client
from live_server import start_server
from processes import pin_server
from twisted.internet import reactor, task

from chatapp.tls.identity import load_or_create_identity
from chatapp.tls.known_hosts import KnownPeers
from chatapp.tls.paths import identity_path, known_peers_path


@pytest_twisted.ensureDeferred
async def test_an_identity_made_under_another_name_of_the_same_server_is_used_not_replaced(tmp_path: Path) -> None:
    service, port = await start_server(str(tmp_path / "server.sqlite3"))
    try:
        assert service.fingerprint is not None
        # alice first reached this server as chat.example:<port> (pinned with the same key), and her
        # identity was made there; she now types 127.0.0.1
        pin_server(port, service.fingerprint, host="chat.example")
        earlier, _ = load_or_create_identity(identity_path("chat.example", port, "alice"))
        alice, _ = await start_client(port, "alice", tmp_path)
        bob, _ = await start_client(port, "bob", tmp_path)
        try:
            assert alice.server.identity is not None
            assert alice.server.identity.fingerprint == earlier.fingerprint  # no new key: contacts see no change
            assert alice.server.identity_made is None
            assert not identity_path("127.0.0.1", port, "alice").exists()
            # bob, who has no identity under another name, gets his own as before
            assert bob.server.identity_made == identity_path("127.0.0.1", port, "bob")
            # and her contacts are kept under the same name as her key
            assert alice.contacts is not None and alice.contacts.host == "chat.example"
            await alice.send_message("bob", "hello")
            known = KnownPeers(known_peers_path())
            for _ in range(500):  # bob's key is written in the background once the chat is open
                if known.lookup("chat.example", port, "bob") is not None:
                    break
                await task.deferLater(reactor, 0.01)
            assert known.lookup("chat.example", port, "bob") is not None
            assert known.lookup("127.0.0.1", port, "bob") is None
        finally:
            await alice.stop()
            await bob.stop()
    finally:
        await service.stopService()
