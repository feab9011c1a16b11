"""A password typed on the terminal that is wrong is said, and asked again, as the server allows."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from chat_harness import PASSWORD, start_client
from live_server import start_server
from twisted.internet import defer, reactor

from chatapp.cli.errors import EXIT_BLOCKED, Fatal
from chatapp.cli.login import login, make_client
from chatapp.cli.options import parse_args
from chatapp.client import Blocked
from chatapp.events import ignore


@pytest_twisted.ensureDeferred
async def test_a_wrong_typed_password_is_said_and_asked_again_until_the_server_says_no_more(
    tmp_path: Path, logged_errors: Any
) -> None:
    service, port = await start_server(str(tmp_path / "server.sqlite3"))
    try:
        first, _ = await start_client(port, "erin", tmp_path)  # the account exists
        await first.stop()
        settings = parse_args(["--server", f"127.0.0.1:{port}", "--user", "erin", "--no-listen"])
        typed = iter(["wrong once", PASSWORD])
        said: list[str] = []
        client = make_client(reactor, settings, ignore)
        name, password = await login(client, settings, "erin", lambda: defer.succeed(next(typed)), False, said.append)
        assert (name, password) == ("erin", PASSWORD)
        assert said == ["wrong user name or password; 2 tries left before this address is blocked"]
        await client.stop()
        # always wrong: asked while the server allows, then the last refusal ends it
        said.clear()
        client = make_client(reactor, settings, ignore)
        with pytest.raises(Fatal) as refused:
            await login(client, settings, "erin", lambda: defer.succeed("still wrong"), False, said.append)
        assert said == [
            "wrong user name or password; 2 tries left before this address is blocked",
            "wrong user name or password; 1 try left: one more wrong password blocks this address",
        ]
        assert refused.value.code == EXIT_BLOCKED  # the third wrong one is the block
        assert len(logged_errors.flush(Blocked)) == 1  # logged as the failed start it is
    finally:
        await service.stopService()
