"""A test PKI for the OpenADR tests: a CA, a VTN certificate for 127.0.0.1 and a VEN one."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from openleadr import utils

__all__ = ["Pki"]


@dataclass(frozen=True)
class Pki:
    """A test CA with a VTN certificate (for 127.0.0.1) and a VEN certificate, as PEM files."""

    ca_file: Path
    vtn_cert: Path
    vtn_key: Path
    ven_cert: Path
    ven_key: Path

    @classmethod
    def create(cls, folder: Path) -> Pki:
        ca_key = ec.generate_private_key(ec.SECP256R1())
        ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "gridflex test CA")])
        ca = _certificate(ca_name, ca_name, ca_key.public_key(), ca_key, ca=True)
        files = {"ca_file": folder / "ca.pem"}
        files["ca_file"].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
        for who in ("vtn", "ven"):
            key = ec.generate_private_key(ec.SECP256R1())
            name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"gridflex test {who}")])
            cert = _certificate(name, ca_name, key.public_key(), ca_key, ca=False)
            files[f"{who}_cert"] = folder / f"{who}.pem"
            files[f"{who}_key"] = folder / f"{who}.key"
            files[f"{who}_cert"].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
            files[f"{who}_key"].write_bytes(
                key.private_bytes(
                    serialization.Encoding.PEM,
                    serialization.PrivateFormat.PKCS8,
                    serialization.NoEncryption(),
                )
            )
        return cls(**files)

    @staticmethod
    def fingerprint(cert_file: Path) -> str:
        fingerprint: str = utils.certificate_fingerprint(cert_file.read_text())
        return fingerprint


def _certificate(
    subject: x509.Name,
    issuer: x509.Name,
    public_key: ec.EllipticCurvePublicKey,
    signing_key: ec.EllipticCurvePrivateKey,
    *,
    ca: bool,
) -> x509.Certificate:
    now = datetime.now(UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if not ca:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
    return builder.sign(signing_key, hashes.SHA256())
