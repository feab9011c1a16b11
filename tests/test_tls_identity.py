"""Identity PEM files: creation (0600 file, 0700 folders, atomic, race-safe), loading, and their paths."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from tls_certs import make_ca, make_leaf

from chatapp.tls.identity import (
    BadIdentityFile,
    identity_to_pem,
    load_identity,
    load_or_create_identity,
    new_identity,
)
from chatapp.tls.paths import (
    identity_path,
    known_peers_path,
    known_servers_path,
    server_certificate_path,
)
from chatapp.tls.private_files import SymlinkRefused, create_private_file, replace_private_file


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


def test_load_or_create_makes_a_private_file_in_private_folders(tmp_path: Path) -> None:
    tmp_path.chmod(0o755)
    path = tmp_path / "made" / "here" / "alice.pem"
    identity, created = load_or_create_identity(path, "alice")
    assert created
    assert mode_of(path) == 0o600
    assert mode_of(tmp_path / "made") == 0o700
    assert mode_of(tmp_path / "made" / "here") == 0o700
    assert mode_of(tmp_path) == 0o755  # folders that existed are left alone
    text = path.read_bytes()
    assert text.index(b"BEGIN CERTIFICATE") < text.index(b"BEGIN PRIVATE KEY")
    assert [p.name for p in path.parent.iterdir()] == ["alice.pem"]  # no temporary file left behind

    again, created_again = load_or_create_identity(path, "alice")
    assert not created_again
    assert again.fingerprint == identity.fingerprint


def test_new_identities_are_ecdsa_p256_self_signed_and_long_lived() -> None:
    identity = new_identity("bob")
    assert identity.private_key.curve.name == "secp256r1"  # type: ignore[union-attr]
    assert identity.certificate.issuer == identity.certificate.subject
    validity = identity.certificate.not_valid_after_utc - identity.certificate.not_valid_before_utc
    assert validity.days > 365 * 50


def test_a_symlink_where_our_file_should_be_is_refused(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere.pem"
    link = tmp_path / "alice.pem"
    link.symlink_to(target)
    with pytest.raises(SymlinkRefused):
        load_or_create_identity(link)
    assert not target.exists()  # nothing was written through the link
    target.write_bytes(identity_to_pem(new_identity()))
    with pytest.raises(SymlinkRefused):
        load_or_create_identity(link)


def test_an_operator_certificate_loads_with_its_chain_and_through_a_symlink(tmp_path: Path) -> None:
    ca = make_ca()
    leaf = make_leaf(ca)
    path = tmp_path / "live.pem"
    path.write_bytes(identity_to_pem(leaf))
    link = tmp_path / "current.pem"
    link.symlink_to(path)
    loaded = load_identity(link)
    assert loaded.certificate == leaf.certificate
    assert loaded.chain == (ca.certificate,)
    assert loaded.fingerprint == leaf.fingerprint


def test_a_traditional_ec_key_block_after_the_certificate_loads(tmp_path: Path) -> None:
    identity = new_identity()
    key_pem = identity.private_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()
    )
    path = tmp_path / "server.pem"
    certificate_pem = identity.certificate.public_bytes(serialization.Encoding.PEM)
    path.write_bytes(b"# comment lines are ignored\n" + key_pem + certificate_pem)
    assert load_identity(path).fingerprint == identity.fingerprint


ENCRYPTED_KEY = b"-----BEGIN ENCRYPTED PRIVATE KEY-----\nAAAA\n-----END ENCRYPTED PRIVATE KEY-----\n"


def pem_of_certificate(identity_pem: bytes) -> bytes:
    return identity_pem[: identity_pem.index(b"-----BEGIN PRIVATE KEY")]


@pytest.mark.parametrize(
    ("contents", "message"),
    [
        (lambda a, b: b"", "no certificate"),
        (lambda a, b: pem_of_certificate(a), "expected one private key, found 0"),
        (lambda a, b: pem_of_certificate(a) + b[len(pem_of_certificate(b)) :], "does not belong"),
        (lambda a, b: a + b[len(pem_of_certificate(b)) :], "expected one private key, found 2"),
        (lambda a, b: pem_of_certificate(a) + ENCRYPTED_KEY, "encrypted"),
        (lambda a, b: b"-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n", "unreadable"),
    ],
)
def test_bad_identity_files_are_refused_with_a_reason(tmp_path: Path, contents, message: str) -> None:
    path = tmp_path / "bad.pem"
    path.write_bytes(contents(identity_to_pem(new_identity()), identity_to_pem(new_identity())))
    with pytest.raises(BadIdentityFile, match=message) as raised:
        load_identity(path)
    assert str(path) in str(raised.value)


RACER = """
import sys
from pathlib import Path
from chatapp.tls.identity import load_or_create_identity
sys.stdin.readline()  # start together
identity, created = load_or_create_identity(Path(sys.argv[1]))
print(identity.fingerprint, created)
"""


def test_processes_racing_to_create_an_identity_all_end_with_the_same_one(tmp_path: Path) -> None:
    path = tmp_path / "identity" / "h_1" / "alice.pem"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    racers = [
        subprocess.Popen(
            [sys.executable, "-c", RACER, str(path)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env
        )
        for _ in range(6)
    ]
    for racer in racers:
        assert racer.stdin is not None
        racer.stdin.write(b"go\n")
        racer.stdin.flush()
    outputs = [racer.communicate(timeout=60)[0].decode().split() for racer in racers]
    assert all(racer.returncode == 0 for racer in racers)
    assert {fingerprint for fingerprint, _ in outputs} == {load_identity(path).fingerprint}
    assert [created for _, created in outputs].count("True") == 1
    assert sorted(p.name for p in path.parent.iterdir()) == ["alice.pem"]


def test_create_private_file_never_overwrites(tmp_path: Path) -> None:
    path = tmp_path / "f"
    assert create_private_file(path, b"first")
    assert not create_private_file(path, b"second")
    assert path.read_bytes() == b"first"


def test_replace_private_file_swaps_the_whole_file_and_tightens_its_mode(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"old contents")
    path.chmod(0o644)
    with path.open("rb") as old_reader:
        replace_private_file(path, b"new")
        assert old_reader.read() == b"old contents"  # a reader that had the old file keeps all of it
    assert path.read_bytes() == b"new"
    assert mode_of(path) == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["f"]


def test_xdg_paths() -> None:
    env = {"HOME": "/home/u", "XDG_DATA_HOME": "/data", "XDG_CONFIG_HOME": "/conf"}
    assert known_servers_path(env) == Path("/conf/chatapp/known_servers")
    assert known_peers_path(env) == Path("/data/chatapp/known_peers")
    assert identity_path("Chat.Example.org", 7000, "Alice", env) == Path(
        "/data/chatapp/identity/chat.example.org_7000/alice.pem"
    )
    # unset, empty or relative XDG variables mean the defaults under $HOME
    for unset in ({"HOME": "/home/u"}, {"HOME": "/home/u", "XDG_DATA_HOME": "", "XDG_CONFIG_HOME": "rel"}):
        assert known_peers_path(unset) == Path("/home/u/.local/share/chatapp/known_peers")
        assert known_servers_path(unset) == Path("/home/u/.config/chatapp/known_servers")


def test_identity_paths_are_safe_and_distinct_file_names() -> None:
    env = {"HOME": "/h"}
    base = Path("/h/.local/share/chatapp/identity")
    assert identity_path("[::1]", 7000, "bob", env) == base / "%3A%3A1_7000" / "bob.pem"
    assert identity_path("::1", 7000, "bob", env) == base / "%3A%3A1_7000" / "bob.pem"
    assert identity_path("host", 1, "ẞtraße", env).name == "sstrasse.pem"  # case-folded
    dotted = identity_path("..", 1, "../x", env)
    assert dotted.parent.parent == base
    assert not dotted.name.startswith(".") and "/" not in dotted.name
    names = {identity_path(h, 1, "u", env).parent.name for h in ("a_b", "a%5Fb", "a:b", "a%3Ab")}
    assert len(names) == 4


def test_server_certificate_lives_next_to_the_database(tmp_path: Path) -> None:
    assert server_certificate_path(tmp_path / "chat.sqlite3") == tmp_path.resolve() / "chatserver-tls.pem"
