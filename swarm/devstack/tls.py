"""The local certificate authority of a `swarm up` stack: its NATS listener speaks TLS only.

`swarm up` creates, in `<data dir>/tls/` (0700, every file 0600):

* `ca.pem`, `ca-key.pem`: a CA of its own (ECDSA P-256), made once and kept, so clients that
  trust it keep trusting the stack across restarts;
* `nats.pem`, `nats-key.pem`: the server's certificate, signed by that CA, for the names a
  client of this machine dials (`127.0.0.1`, `localhost`, `::1`); made again when missing,
  when it no longer matches the CA, or a month before it expires.

Clients verify the server against `ca.pem` (`swarm status -o json` names it as `nats_ca`;
`$SWARM_NATS_CA` for Swarm's own clients, `swarm.kernel.connection`). The CA's key never leaves
the data dir; whoever reads it could sign a certificate the stack's clients trust, which is why
it is the owner's alone, like the nkey seeds.

docker-compose's cluster (`swarm.devstack.compose`) has the same files made for the names its
nodes are dialed by, and a server certificate that is a client's too: the nodes' routes present
it to each other, and a node takes a route only with a certificate of the CA.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from swarm.devstack.embedded import private_fd

#: The names a local client dials the server by.
SERVER_NAMES: Final = ("localhost", "127.0.0.1", "::1")
_CA_DAYS: Final = 3650
_SERVER_DAYS: Final = 397
#: A certificate this close to its end is made again at the next `swarm up`.
_RENEW_BEFORE: Final = datetime.timedelta(days=30)

_Pair = tuple[x509.Certificate, ec.EllipticCurvePrivateKey]


@dataclass(frozen=True, slots=True)
class TlsFiles:
    """Where a stack's CA and its server certificate are."""

    directory: Path

    @property
    def ca_cert(self) -> Path:
        """What clients trust."""
        return self.directory / "ca.pem"

    @property
    def ca_key(self) -> Path:
        return self.directory / "ca-key.pem"

    @property
    def server_cert(self) -> Path:
        return self.directory / "nats.pem"

    @property
    def server_key(self) -> Path:
        return self.directory / "nats-key.pem"


def issue(
    directory: Path,
    *,
    names: Sequence[str] = SERVER_NAMES,
    client_auth: bool = False,
    now: datetime.datetime | None = None,
) -> TlsFiles:
    """The CA and server certificate in `directory`: those made before while still good, new
    ones otherwise (a new CA also gets a new server certificate). The server certificate is for
    `names` (host names and addresses); with `client_auth` it also serves as a client's (a
    cluster's nodes present it on their routes)."""
    now = now or datetime.datetime.now(datetime.UTC)
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    directory.chmod(0o700)
    files = TlsFiles(directory)
    ca = _load(files.ca_cert, files.ca_key)
    if ca is None or ca[0].not_valid_after_utc - now < _RENEW_BEFORE:
        ca = _new_ca(now)
        _write(files.ca_key, _key_pem(ca[1]))
        _write(files.ca_cert, ca[0].public_bytes(serialization.Encoding.PEM))
    server = _load(files.server_cert, files.server_key)
    if server is None or not _still_good(server[0], ca, names, client_auth, now):
        cert, key = _new_server(ca, names, client_auth, now)
        _write(files.server_key, _key_pem(key))
        _write(files.server_cert, cert.public_bytes(serialization.Encoding.PEM))
    return files


def _new_ca(now: datetime.datetime) -> _Pair:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Swarm local CA")])
    cert = (
        _builder(name, name, key.public_key(), now, _CA_DAYS)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_usage(cert_sign=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
        .sign(key, hashes.SHA256())
    )
    return cert, key


def _new_server(
    ca: _Pair, names: Sequence[str], client_auth: bool, now: datetime.datetime
) -> _Pair:
    ca_cert, ca_key = ca
    key = ec.generate_private_key(ec.SECP256R1())
    alt_names: list[x509.GeneralName] = [
        x509.IPAddress(ipaddress.ip_address(n)) if _is_ip(n) else x509.DNSName(n) for n in names
    ]
    usages = [ExtendedKeyUsageOID.SERVER_AUTH]
    if client_auth:
        usages.append(ExtendedKeyUsageOID.CLIENT_AUTH)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Swarm NATS")])
    cert = (
        _builder(name, ca_cert.subject, key.public_key(), now, _SERVER_DAYS)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_usage(cert_sign=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage(usages), False)
        .add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
        )
        .sign(ca_key, hashes.SHA256())
    )
    return cert, key


def _builder(
    subject: x509.Name,
    issuer: x509.Name,
    public: ec.EllipticCurvePublicKey,
    now: datetime.datetime,
    days: int,
) -> x509.CertificateBuilder:
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        # A little before now: a client whose clock is slightly behind still accepts it.
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
    )


def _usage(*, cert_sign: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=not cert_sign,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=cert_sign,
        crl_sign=cert_sign,
        encipher_only=False,
        decipher_only=False,
    )


def _still_good(
    cert: x509.Certificate,
    ca: _Pair,
    names: Sequence[str],
    client_auth: bool,
    now: datetime.datetime,
) -> bool:
    """Signed by `ca`, for every name a client dials, a client's certificate too when
    `client_auth`, and not near its end."""
    try:
        cert.verify_directly_issued_by(ca[0])
        alt = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        usages = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except (ValueError, TypeError, InvalidSignature, x509.ExtensionNotFound):
        return False
    have = {str(n) for n in alt.get_values_for_type(x509.IPAddress)}
    have |= set(alt.get_values_for_type(x509.DNSName))
    wanted = {str(ipaddress.ip_address(n)) if _is_ip(n) else n for n in names}
    if client_auth and ExtendedKeyUsageOID.CLIENT_AUTH not in usages:
        return False
    return wanted <= have and cert.not_valid_after_utc - now >= _RENEW_BEFORE


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def _load(cert_file: Path, key_file: Path) -> _Pair | None:
    """A certificate and its key, or None if either is missing, unreadable or not ECDSA."""
    try:
        cert = x509.load_pem_x509_certificate(cert_file.read_bytes())
        key = serialization.load_pem_private_key(key_file.read_bytes(), password=None)
    except (OSError, ValueError):
        return None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        return None
    if cert.public_key() != key.public_key():
        return None
    return cert, key


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _write(path: Path, data: bytes) -> None:
    """Replaced whole, created for the owner only (a server reading it never sees half)."""
    fresh = path.with_name(f".{path.name}.new")
    with open(private_fd(fresh, os.O_TRUNC), "wb") as f:
        f.write(data)
    fresh.replace(path)


__all__ = ["SERVER_NAMES", "TlsFiles", "issue"]
