"""TLS material of a local stack started with `--auth scram`: a CA made for the run and one certificate per broker.

    paths = make_certs(state_dir / "tls", "127.0.0.1")            # the local stack
    python -m liqwatch.tools.certs /tls 127.0.0.1 kafka-1 kafka-2 kafka-3   # docker-compose.yml's `production` profile
    paths.ca          # CA certificate (PEM): what clients trust (kafka.ca_file)
    paths.broker      # the brokers' key (PKCS#8) and certificate chain in one PEM file (ssl.keystore.type=PEM)

The broker certificate names 127.0.0.1 as an IP address (and localhost, and any other names given: the brokers'
host names in a compose network), so clients verify the hostname as librdkafka and Python's ssl do by default. Keys are written mode 0600. Made once per state dir (the CA a client
already trusts stays valid across `stack up`s); `cryptography` rather than keytool: PEM is what every client of
liqwatch reads, and no intermediate keystore is left behind.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

VALID_DAYS = 825


@dataclass(frozen=True)
class CertPaths:
    ca: Path
    ca_key: Path
    broker: Path


def cert_paths(tls_dir: Path) -> CertPaths:
    return CertPaths(tls_dir / "ca.pem", tls_dir / "ca.key", tls_dir / "broker.pem")


def make_certs(tls_dir: Path, host: str, names: tuple[str, ...] = ()) -> CertPaths:
    """The CA and the broker certificate for `host` (an IP address) and `names` in `tls_dir` (kept when both are
    there already)."""
    paths = cert_paths(tls_dir)
    if paths.ca.exists() and paths.broker.exists():
        return paths
    tls_dir.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "liqwatch local stack CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
          .not_valid_after(now + dt.timedelta(days=VALID_DAYS))
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                       content_commitment=False, key_encipherment=False, data_encipherment=False,
                                       key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=VALID_DAYS))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(host)),
                                                        *(x509.DNSName(n) for n in ("localhost", *names))]),
                           critical=False)
            # both: a broker is the server of its clients and the client of the other brokers' controllers
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                           critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    pem = serialization.Encoding.PEM
    pkcs8 = serialization.PrivateFormat.PKCS8
    _write(paths.ca_key, ca_key.private_bytes(pem, pkcs8, serialization.NoEncryption()), 0o600)
    _write(paths.broker, key.private_bytes(pem, pkcs8, serialization.NoEncryption()) + cert.public_bytes(pem)
           + ca.public_bytes(pem), 0o600)
    _write(paths.ca, ca.public_bytes(pem), 0o644)
    return paths


def make_untrusted_ca(path: Path) -> Path:
    """A CA certificate no broker of the stack is signed by (tests: a client that must refuse the broker)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "some other CA")])
    now = dt.datetime.now(dt.timezone.utc)
    ca = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
          .not_valid_after(now + dt.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True).sign(key, hashes.SHA256()))
    _write(path, ca.public_bytes(serialization.Encoding.PEM), 0o644)
    return path


def _write(path: Path, data: bytes, mode: int) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.unlink(missing_ok=True)
    with os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode), "wb") as f:
        f.write(data)
    tmp.replace(path)


if __name__ == "__main__":  # python -m liqwatch.tools.certs DIR IP [NAME ...]
    import sys

    if len(sys.argv) < 3:
        sys.exit("usage: python -m liqwatch.tools.certs DIR IP [NAME ...]")
    made = make_certs(Path(sys.argv[1]), sys.argv[2], tuple(sys.argv[3:]))
    print(f"CA {made.ca}, broker key and certificate {made.broker}")
