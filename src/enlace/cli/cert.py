"""``enlace cert HOST...``: a self-signed certificate and key for TLS on your own machines.

The certificate names every HOST (names and IP addresses, IPv6 included) and is
its own issuer, so clients trust it by being given the file (``--ca``), not by
the system's store. Fine for a laptop, a lab or a LAN whose clients you hand the
file to; for a server strangers connect to, use a certificate from a public CA
(Let's Encrypt). The key is an ECDSA P-256 key: small and fast to handshake with.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from pathlib import Path

from enlace.addresses import format_address
from enlace.exceptions import EnlaceError

__all__ = ["DEFAULT_DAYS", "DEFAULT_HOSTS", "make_certificate", "run_cert"]

#: Names a certificate carries when no HOST is given: this machine, by every name.
DEFAULT_HOSTS = ("localhost", "127.0.0.1", "::1")
#: How long a made certificate is valid: a year of local use, then make another.
DEFAULT_DAYS = 365


def make_certificate(
    hosts: list[str], cert_path: Path, key_path: Path, *, days: int = DEFAULT_DAYS
) -> None:
    """Write a self-signed certificate for ``hosts`` and its private key (mode 0600)."""
    # Imported here: only this command needs the cryptography package.
    from cryptography import x509  # noqa: PLC0415
    from cryptography.hazmat.primitives import hashes, serialization  # noqa: PLC0415
    from cryptography.hazmat.primitives.asymmetric import ec  # noqa: PLC0415
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID  # noqa: PLC0415

    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host.strip("[]"))))
        except ValueError:
            names.append(x509.DNSName(host))
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, hosts[0][:64]),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "enlace cert (self-signed)"),
        ]
    )
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        # A few minutes back: a client whose clock is slightly behind still accepts it.
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(key, hashes.SHA256())
    )
    key_bytes = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    try:
        # Created 0600 from the start: the key is never readable by others, even briefly.
        fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as out:
            out.write(key_bytes)
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    except OSError as exc:
        raise EnlaceError(f"cannot write {exc.filename}: {exc.strerror}") from exc


def run_cert(hosts: list[str], *, out: Path, days: int, force: bool) -> int:
    """Make the files, then print them and the exact flags to use them with."""
    hosts = hosts or list(DEFAULT_HOSTS)
    if days < 1:
        raise EnlaceError("--days must be at least 1")
    cert_path, key_path = out / "enlace-cert.pem", out / "enlace-key.pem"
    if not force:
        for path in (cert_path, key_path):
            if path.exists():
                raise EnlaceError(f"{path} exists; use --force to replace it")
    out.mkdir(parents=True, exist_ok=True)
    make_certificate(hosts, cert_path, key_path, days=days)
    host = hosts[0].strip("[]")  # "[::1]" is accepted as a name, as make_certificate() does
    target = format_address(host, 8080)
    print(f"enlace: wrote {cert_path} (certificate for {', '.join(hosts)}; valid {days} days)")
    print(f"enlace: wrote {key_path} (its private key: keep it secret)")
    print(f"  server: enlace serve chat --tls-cert {cert_path} --tls-key {key_path}")
    print(f"  client: enlace chat {target} --tls --ca {cert_path} --nick ana")
    print(f"          enlace connect --tls --ca {cert_path} {host} PORT")
    print(f"  openssl s_client -connect {target} -CAfile {cert_path} -verify_return_error")
    print(
        "Self-signed: clients trust it only with --ca. Fine on your machines and a LAN; "
        "for the public, use a certificate from a public CA."
    )
    return 0
