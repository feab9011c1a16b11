"""Fingerprints: the same digest as the openssl command line, parsing, constant-time comparison."""

from __future__ import annotations

import datetime
import subprocess

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from OpenSSL import crypto

from chatapp.tls.fingerprint import BadFingerprint, fingerprint_of, parse_fingerprint, same_fingerprint
from chatapp.tls.identity import identity_to_pem, new_identity


def openssl_fingerprint(pem: bytes) -> str:
    """PROTOCOL.md 4's recipe: x509 -pubkey | pkey -pubin -outform der | sha256sum."""
    public_pem = subprocess.run(["openssl", "x509", "-pubkey", "-noout"], input=pem, capture_output=True, check=True)
    der = subprocess.run(
        ["openssl", "pkey", "-pubin", "-outform", "der"], input=public_pem.stdout, capture_output=True, check=True
    )
    digest = subprocess.run(["sha256sum"], input=der.stdout, capture_output=True, check=True)
    return "sha256:" + digest.stdout.split()[0].decode()


def test_fingerprint_matches_the_openssl_command_line() -> None:
    identity = new_identity("alice")
    expected = openssl_fingerprint(identity_to_pem(identity))
    assert fingerprint_of(identity.certificate) == expected
    assert identity.fingerprint == expected


def test_pyopenssl_and_cryptography_certificates_give_the_same_fingerprint() -> None:
    identity = new_identity()
    assert fingerprint_of(crypto.X509.from_cryptography(identity.certificate)) == identity.fingerprint


def test_a_renewed_certificate_for_the_same_key_keeps_its_fingerprint() -> None:
    identity = new_identity("first")
    later = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(days=400)  # noqa: UP017 (3.10)
    renewed = (
        x509.CertificateBuilder()
        .subject_name(identity.certificate.subject)
        .issuer_name(identity.certificate.subject)
        .public_key(identity.private_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(later)
        .not_valid_after(later + datetime.timedelta(days=1))
        .sign(identity.private_key, hashes.SHA256())
    )
    assert renewed.fingerprint(hashes.SHA256()) != identity.certificate.fingerprint(hashes.SHA256())
    assert fingerprint_of(renewed) == identity.fingerprint
    assert fingerprint_of(new_identity("first").certificate) != identity.fingerprint


def test_parse_accepts_upper_case_and_returns_lower_case() -> None:
    hex_digits = "0123456789ABCDEF" * 4
    assert parse_fingerprint(f"SHA256:{hex_digits}") == "sha256:" + hex_digits.lower()
    assert parse_fingerprint(f"  sha256:{hex_digits.lower()}\n") == "sha256:" + hex_digits.lower()


@pytest.mark.parametrize(
    "text",
    [
        "",
        "0123456789abcdef" * 4,  # no prefix
        "sha1:" + "ab" * 20,
        "sha256:" + "ab" * 31,  # 62 digits
        "sha256:" + "ab" * 33,
        "sha256:" + "g" * 64,
        "sha256: " + "ab" * 32,
        "sha256:" + "ab" * 32 + " extra",
    ],
)
def test_parse_rejects_what_is_not_a_fingerprint(text: str) -> None:
    with pytest.raises(BadFingerprint):
        parse_fingerprint(text)


def test_same_fingerprint() -> None:
    a = new_identity().fingerprint
    b = new_identity().fingerprint
    assert same_fingerprint(a, a.upper().replace("SHA256", "sha256"))
    assert same_fingerprint(a, "SHA256:" + a[len("sha256:") :].upper())
    assert not same_fingerprint(a, b)
    assert not same_fingerprint("nonsense", "nonsense")
    assert not same_fingerprint(a, a[:-1])
