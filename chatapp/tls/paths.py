"""Where the TLS files live (PROTOCOL.md 4.1, 4.2, 4.4), following the XDG base directory rules.

Every function takes the environment as an optional mapping so tests and tools can point it elsewhere.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import quote

SERVER_CERTIFICATE_NAME = "chatserver-tls.pem"


def _xdg_folder(variable: str, default: str, environ: Mapping[str, str] | None) -> Path:
    env = os.environ if environ is None else environ
    value = env.get(variable, "")
    # The spec says a relative value is invalid and must be ignored, not resolved against the cwd.
    if value and os.path.isabs(value):
        return Path(value)
    return Path(env.get("HOME") or os.path.expanduser("~")) / default


def data_home(environ: Mapping[str, str] | None = None) -> Path:
    """``$XDG_DATA_HOME``, by default ``~/.local/share``."""
    return _xdg_folder("XDG_DATA_HOME", ".local/share", environ)


def config_home(environ: Mapping[str, str] | None = None) -> Path:
    """``$XDG_CONFIG_HOME``, by default ``~/.config``."""
    return _xdg_folder("XDG_CONFIG_HOME", ".config", environ)


def known_servers_path(environ: Mapping[str, str] | None = None) -> Path:
    """The known-servers file: ``$XDG_CONFIG_HOME/chatapp/known_servers``."""
    return config_home(environ) / "chatapp" / "known_servers"


def known_peers_path(environ: Mapping[str, str] | None = None) -> Path:
    """The known-peers file: ``$XDG_DATA_HOME/chatapp/known_peers``."""
    return data_home(environ) / "chatapp" / "known_peers"


def _safe_name(text: str) -> str:
    # Percent-encoding keeps ordinary host and user names readable, cannot produce "/", and is
    # one-to-one ("%" itself is encoded), so two hosts never share a folder; IPv6 colons become %3A.
    # A leading "." is encoded too, so no name is hidden, "." or "..".
    name = quote(text, safe="-_.@+")
    return "%2E" + name[1:] if name.startswith(".") else name


def identity_path(host: str, port: int, user: str, environ: Mapping[str, str] | None = None) -> Path:
    """The identity file of ``user`` on ``host:port``: ``$XDG_DATA_HOME/chatapp/identity/<host>_<port>/<user>.pem``.

    The host is lower-cased and the user case-folded, as the server treats names; both are made safe
    as file names.
    """
    if not user:
        raise ValueError("an identity needs a user name")
    if not host:
        raise ValueError("an identity needs a host")
    folder = f"{_safe_name(host.lower().strip('[]'))}_{int(port)}"
    return data_home(environ) / "chatapp" / "identity" / folder / f"{_safe_name(user.casefold())}.pem"


def server_certificate_path(database_path: str | os.PathLike[str]) -> Path:
    """Where the server keeps its own certificate when ``--tls-cert`` is not given: next to the database."""
    return Path(database_path).resolve().parent / SERVER_CERTIFICATE_NAME
