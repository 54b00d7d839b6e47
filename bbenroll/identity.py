"""The master's TLS identity: key + self-signed certificate, and its TubID.

The TubID is computed exactly as Foolscap does (``foolscap.crypto.digest32`` of
the certificate's SHA-1 digest): base32 of SHA-1 over the DER certificate.
Computing it needs only the standard library, so every registry load can check
it cheaply; minting a key needs ``cryptography`` and is imported lazily.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

from bbenroll.errors import IdentityError
from bbenroll.fileio import atomic_write
from bbenroll.furl import base32_encode

_CERT_RE = re.compile(rb"-----BEGIN CERTIFICATE-----\s*(.+?)\s*-----END CERTIFICATE-----", re.S)
_KEY_RE = re.compile(rb"-----BEGIN (?:RSA |EC )?PRIVATE KEY-----")


@dataclass(frozen=True)
class Identity:
    path: Path
    pem: bytes  # key + certificate, what Foolscap's Tub(certData=...) takes
    tubid: str


def tubid_from_pem(pem: bytes, where: str = "identity") -> str:
    mo = _CERT_RE.search(pem)
    if not mo:
        raise IdentityError(f"{where}: no PEM certificate found")
    try:
        der = base64.b64decode(mo.group(1), validate=False)
    except (binascii.Error, ValueError):
        raise IdentityError(f"{where}: the PEM certificate is not valid base64") from None
    return base32_encode(hashlib.sha1(der).digest())


def load_identity(path: Path) -> Identity:
    path = Path(path)
    try:
        pem = path.read_bytes()
    except FileNotFoundError:
        raise IdentityError(f"{path}: master identity file not found") from None
    except OSError as e:
        raise IdentityError(f"{path}: cannot read master identity: {e.strerror}") from None
    if not _KEY_RE.search(pem):
        raise IdentityError(f"{path}: no PEM private key found")
    return Identity(path, pem, tubid_from_pem(pem, str(path)))


def make_identity_pem(common_name: str = "bbenroll master") -> bytes:
    """A fresh RSA-2048 key and self-signed certificate, PEM, key first.

    RSA-2048 is what Foolscap itself mints, so every Foolscap peer can talk to it.
    """
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import NameOID

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        # Foolscap pins the certificate itself and ignores its dates.
        .not_valid_after(now + datetime.timedelta(days=365 * 30))
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )
    return key_pem + cert.public_bytes(serialization.Encoding.PEM)


def create_identity(path: Path) -> Identity:
    """Write a new identity file (mode 0600); refuses to replace an existing one."""
    path = Path(path)
    pem = make_identity_pem()
    try:
        atomic_write(path, pem, exclusive=True)
    except FileExistsError:
        raise IdentityError(f"{path}: already exists; refusing to replace a master identity") from None
    except OSError as e:
        raise IdentityError(f"{path}: cannot write master identity: {e.strerror}") from None
    return Identity(path, pem, tubid_from_pem(pem, str(path)))
