"""TLS for the emulators and tests: a throwaway certificate authority and HTTPS servers.

Real TLS on 127.0.0.1, signed by a CA that exists only for the test run, so that what the app
trusts (REQUESTS_CA_BUNDLE / SSL_CERT_FILE, shared/clients/transport.py) is exercised for real:

    ca = CertificateAuthority.create(tmp_path)
    server = GraphEmulator()                 # any emulators.server.Server
    https_url = serve_tls(server, ca.issue())
    server.start()
    ... REQUESTS_CA_BUNDLE=ca.cert_file ...

Written for the tests; reusable by any emulator that must speak HTTPS (e.g. an Entra token
endpoint, which azure-identity only calls over https).
"""
from __future__ import annotations

import datetime
import ipaddress
import ssl
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from .server import Server

_DAY = datetime.timedelta(days=1)


@dataclass(frozen=True)
class ServerCertificate:
    cert_file: Path  # the leaf certificate (PEM)
    key_file: Path  # its private key (PEM, unencrypted)


@dataclass
class CertificateAuthority:
    """A self-signed root; ``cert_file`` is what a client must trust."""

    directory: Path
    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey
    cert_file: Path

    @classmethod
    def create(cls, directory: Path | str, name: str = "intune-sync test CA") -> CertificateAuthority:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{name} {uuid.uuid4().hex[:8]}")])
        now = datetime.datetime.now(datetime.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _DAY)
            .not_valid_after(now + 30 * _DAY)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
                    key_encipherment=False, data_encipherment=False, key_agreement=False,
                    encipher_only=False, decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256())
        )
        cert_file = directory / "ca.pem"
        cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        return cls(directory, cert, key, cert_file)

    def issue(self, hosts: tuple[str, ...] = ("127.0.0.1", "localhost"), name: str = "server") -> ServerCertificate:
        """A server certificate for ``hosts`` (IP addresses or DNS names), signed by this CA."""
        key = ec.generate_private_key(ec.SECP256R1())
        names: list[x509.GeneralName] = []
        for host in hosts:
            try:
                names.append(x509.IPAddress(ipaddress.ip_address(host)))
            except ValueError:
                names.append(x509.DNSName(host))
        now = datetime.datetime.now(datetime.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])]))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _DAY)
            .not_valid_after(now + 7 * _DAY)
            .add_extension(x509.SubjectAlternativeName(names), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()), critical=False
            )
            .sign(self.key, hashes.SHA256())
        )
        cert_file, key_file = self.directory / f"{name}.pem", self.directory / f"{name}-key.pem"
        cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        key_file.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
        return ServerCertificate(cert_file, key_file)


def server_context(certificate: ServerCertificate) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(certificate.cert_file, certificate.key_file)
    return context


def serve_tls(server: Server, certificate: ServerCertificate) -> str:
    """Make ``server`` (not yet started) speak HTTPS only; returns its https base URL.

    The handshake runs in each connection's handler thread (not in the accept loop), so a client
    that rejects the certificate or never finishes the handshake cannot stall the server."""
    server.socket = server_context(certificate).wrap_socket(
        server.socket, server_side=True, do_handshake_on_connect=False
    )
    default_handle_error = server.handle_error

    def handle_error(request: Any, client_address: Any) -> None:
        import sys

        if isinstance(sys.exc_info()[1], (ssl.SSLError, ConnectionError)):
            return  # a client refused our certificate: expected in tests that prove it must
        default_handle_error(request, client_address)

    server.handle_error = handle_error  # type: ignore[method-assign]
    host, port = server.server_address[:2]
    return f"https://{host!s}:{port}"
