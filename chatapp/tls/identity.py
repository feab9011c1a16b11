"""A TLS identity: a private key and its certificate (plus any chain), kept together in one PEM file.

The file holds the certificate first, then any chain certificates, then the unencrypted private key;
that is the layout of ``--tls-cert PATH``, of the server's auto-created ``chatserver-tls.pem`` and of a
client's identity files. New identities are an ECDSA P-256 key with a self-signed certificate valid for
a century: nobody checks names or dates in them, only fingerprints (PROTOCOL.md 4).

``load_identity`` reads a file an operator named (symbolic links followed, as certificate tools keep
their live files behind links); ``load_or_create_identity`` manages a file of our own and refuses a
symbolic link at its name. All of this is blocking file I/O for start-up, login or a worker thread.
"""

from __future__ import annotations

import datetime
import os
import re
import secrets
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import NameOID

from chatapp.tls.fingerprint import fingerprint_of
from chatapp.tls.private_files import create_private_file, read_private_file

VALIDITY = datetime.timedelta(days=365 * 100)
# Backdated a little so a peer whose clock runs behind still sees a certificate that has begun.
BACKDATE = datetime.timedelta(days=1)

_PEM_BLOCK = re.compile(rb"-----BEGIN ([A-Z0-9 ]+)-----\r?\n.*?-----END \1-----", re.DOTALL)
_KEY_LABELS = {b"PRIVATE KEY", b"EC PRIVATE KEY", b"RSA PRIVATE KEY"}


# The key kinds a TLS 1.3 certificate can sign handshakes with (ours are always ECDSA P-256; an operator's
# certificate from a public CA may be RSA).
SigningKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey


class BadIdentityFile(ValueError):
    """A PEM file that does not hold a usable certificate and matching private key."""


@dataclass(frozen=True)
class Identity:
    """A certificate, the chain that goes with it (may be empty) and the certificate's private key."""

    certificate: x509.Certificate
    chain: tuple[x509.Certificate, ...]
    private_key: SigningKey

    @property
    def fingerprint(self) -> str:
        return fingerprint_of(self.certificate)


def new_identity(common_name: str = "chatapp", now: datetime.datetime | None = None) -> Identity:
    """A fresh ECDSA P-256 key and a self-signed certificate for it."""
    key = ec.generate_private_key(ec.SECP256R1())
    start = (now or datetime.datetime.now(datetime.timezone.utc)) - BACKDATE  # noqa: UP017 (3.10)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name[:64] or "chatapp")])
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(int.from_bytes(secrets.token_bytes(16), "big") >> 1)  # positive, at most 127 bits
        .not_valid_before(start)
        .not_valid_after(start + VALIDITY)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    return Identity(certificate, (), key)


def identity_to_pem(identity: Identity) -> bytes:
    """The PEM file contents: certificate, chain, then the private key (PKCS#8, unencrypted)."""
    parts = [cert.public_bytes(serialization.Encoding.PEM) for cert in (identity.certificate, *identity.chain)]
    parts.append(
        identity.private_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return b"".join(parts)


def identity_from_pem(data: bytes, source: str = "<pem>") -> Identity:
    """Parse PEM data holding certificate(s) and one private key; ``source`` names it in errors."""
    certificates: list[x509.Certificate] = []
    keys: list[SigningKey] = []
    for block in _PEM_BLOCK.finditer(data):
        label = block.group(1)
        try:
            if label == b"CERTIFICATE":
                certificates.append(x509.load_pem_x509_certificate(block.group(0)))
            elif label in _KEY_LABELS:
                key = serialization.load_pem_private_key(block.group(0), password=None)
                if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey):
                    raise BadIdentityFile(f"{source}: a {type(key).__name__} cannot sign a TLS handshake")
                keys.append(key)
            elif label == b"ENCRYPTED PRIVATE KEY":
                raise BadIdentityFile(f"{source}: the private key is encrypted; give an unencrypted one")
        except (ValueError, TypeError) as error:
            if isinstance(error, BadIdentityFile):
                raise
            raise BadIdentityFile(f"{source}: unreadable {label.decode()} block: {error}") from None
    if not certificates:
        raise BadIdentityFile(f"{source}: no certificate found")
    if len(keys) != 1:
        raise BadIdentityFile(f"{source}: expected one private key, found {len(keys)}")
    certificate, *chain = certificates
    key_spki = (
        keys[0].public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    cert_spki = certificate.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    if key_spki != cert_spki:
        raise BadIdentityFile(f"{source}: the private key does not belong to the first certificate")
    return Identity(certificate, tuple(chain), keys[0])


def load_identity(path: str | os.PathLike[str]) -> Identity:
    """Read an identity file an operator named (``--tls-cert``); symbolic links are followed."""
    return identity_from_pem(Path(path).read_bytes(), str(path))


def load_or_create_identity(path: Path, common_name: str = "chatapp") -> tuple[Identity, bool]:
    """The identity in ``path``, made (0600, folders 0700) if there is none; True if this call made it.

    Safe when processes race: one creates the file, the others load that one. A symbolic link at
    ``path`` is refused (``private_files.SymlinkRefused``) instead of being read or written through.
    """
    try:
        return identity_from_pem(read_private_file(path), str(path)), False
    except FileNotFoundError:
        pass
    identity = new_identity(common_name)
    if create_private_file(path, identity_to_pem(identity)):
        return identity, True
    return identity_from_pem(read_private_file(path), str(path)), False
