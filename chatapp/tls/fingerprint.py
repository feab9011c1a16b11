"""Fingerprints: the name of a public key, ``sha256:`` + 64 lower-case hex digits.

The digest is SHA-256 over the DER SubjectPublicKeyInfo, so a renewed certificate for the same key keeps
its fingerprint, and anyone can compute it with
``openssl x509 -in cert.pem -pubkey -noout | openssl pkey -pubin -outform der | sha256sum``.
"""

from __future__ import annotations

import hashlib
import hmac
import re

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from OpenSSL import crypto

PREFIX = "sha256:"
_FINGERPRINT = re.compile(r"sha256:[0-9a-f]{64}")


class BadFingerprint(ValueError):
    """A string that is not ``sha256:`` followed by 64 hex digits."""


def fingerprint_of(certificate: x509.Certificate | crypto.X509) -> str:
    """The fingerprint of the public key in ``certificate`` (a cryptography or pyOpenSSL certificate)."""
    if isinstance(certificate, crypto.X509):
        certificate = certificate.to_cryptography()
    spki = certificate.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return PREFIX + hashlib.sha256(spki).hexdigest()


def parse_fingerprint(text: str) -> str:
    """``text`` as a canonical fingerprint (hex in lower case); raise ``BadFingerprint`` if it is not one.

    Upper-case hex is accepted because people copy fingerprints from tools that print it that way; the
    prefix must still be there, so a bare digest of some other kind is never mistaken for one.
    """
    candidate = text.strip()
    if candidate[: len(PREFIX)].lower() == PREFIX:
        candidate = PREFIX + candidate[len(PREFIX) :].lower()
    if not _FINGERPRINT.fullmatch(candidate):
        raise BadFingerprint(f"not a fingerprint (expected sha256: and 64 hex digits): {text[:100]!r}")
    return candidate


def same_fingerprint(a: str, b: str) -> bool:
    """Whether two fingerprints name the same key, compared in constant time.

    Both are canonicalised first, so ``SHA256:AB..`` equals ``sha256:ab..``; anything that is not a
    fingerprint equals nothing, not even itself.
    """
    try:
        canonical_a, canonical_b = parse_fingerprint(a), parse_fingerprint(b)
    except BadFingerprint:
        return False
    return hmac.compare_digest(canonical_a.encode("ascii"), canonical_b.encode("ascii"))
