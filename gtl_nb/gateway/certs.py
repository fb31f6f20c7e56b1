"""``gtl certs``: a development certificate authority and a server certificate for the gateway's TLS
listeners (``https``, ``wss``, ``grpcs``, ``quic``), made with ``cryptography``.

``make_dev_certificates(directory)`` writes ``ca.pem`` (the CA's certificate, to give clients:
``connect(..., verify="ca.pem")``), ``server.pem`` and ``server-key.pem`` (for the listener), with
the server certificate valid for ``localhost``, ``127.0.0.1`` and ``::1`` unless other names are
given. Keys are ECDSA P-256 and written readable by their owner only; the CA's own key is not kept
(a development CA signs once), so a leaked directory cannot mint further certificates.
"""

from __future__ import annotations

import argparse
import datetime
import ipaddress
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gtl_nb.protocol.errors import ConfigurationError

__all__ = ["DevCertificates", "add_subcommands", "make_dev_certificates"]

DEFAULT_NAMES = ("localhost", "127.0.0.1", "::1")
MAX_DAYS = 3650
"""The longest validity ``gtl certs`` writes (ten years: a development pair, not a root of trust)."""
_DNS_LABEL_CHARACTERS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-")


@dataclass(frozen=True)
class DevCertificates:
    """Where ``make_dev_certificates`` wrote its files."""

    ca: Path
    certificate: Path
    key: Path


def make_dev_certificates(
    directory: str | os.PathLike[str], names: Sequence[str] = DEFAULT_NAMES, *, days: int = 30
) -> DevCertificates:
    """Write a development CA certificate and a server certificate + key for ``names`` (DNS names
    or IP addresses) into ``directory``, valid for ``days`` days from now; a ``ConfigurationError`` says
    what is wrong with them, or why the directory cannot take the files."""
    if not names:
        raise ConfigurationError("a server certificate needs at least one name")
    if isinstance(days, bool) or not isinstance(days, int) or not 1 <= days <= MAX_DAYS:
        raise ConfigurationError(f"days (--days) must be a whole number from 1 to {MAX_DAYS}, got {days!r}")
    alternative = [_general_name(name) for name in names]
    folder = Path(directory)
    try:
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        return _write_certificates(folder, names, alternative, days)
    except OSError as exc:
        why = "a file of that name is there" if isinstance(exc, FileExistsError) else exc.strerror or str(exc)
        raise ConfigurationError(f"cannot write the certificates into {str(directory)!r}: {why}") from None


def _write_certificates(folder: Path, names: Sequence[str], alternative: list[Any], days: int) -> DevCertificates:
    """``make_dev_certificates`` once its arguments are checked and ``folder`` exists."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.timezone.utc)
    start, end = now - datetime.timedelta(minutes=5), now + datetime.timedelta(days=days)

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "gtl_nb development CA")])
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )

    server_key = ec.generate_private_key(ec.SECP256R1())
    server_cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
        .issuer_name(ca_name)
        .public_key(server_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.SubjectAlternativeName(alternative), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )

    files = DevCertificates(folder / "ca.pem", folder / "server.pem", folder / "server-key.pem")
    files.ca.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    files.certificate.write_bytes(server_cert.public_bytes(serialization.Encoding.PEM))
    key_bytes = server_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    _write_private(files.key, key_bytes)
    return files


def _general_name(name: str) -> Any:
    """``name`` as the certificate lists it: an IP address, else a DNS name (``*.`` first for a wildcard),
    or a ``ConfigurationError`` for one no client could ever match."""
    from cryptography import x509

    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        pass
    host = name[2:] if name.startswith("*.") else name
    labels = host.split(".")
    if len(name) > 253 or not all(_is_dns_label(label) for label in labels):
        raise ConfigurationError(
            f"--name {name!r} is neither an IP address nor a DNS name (letters, digits and hyphens, "
            "dot-separated, each part 1 to 63 long and not starting or ending with a hyphen)"
        )
    return x509.DNSName(name)


def _is_dns_label(label: str) -> bool:
    """Whether ``label`` is one dot-separated part of a host name (RFC 1123)."""
    return (
        0 < len(label) <= 63
        and not label.startswith("-")
        and not label.endswith("-")
        and all(character in _DNS_LABEL_CHARACTERS for character in label)
    )


def _write_private(path: Path, data: bytes) -> None:
    """Write ``data`` to a file only its owner can read (created so, never widened afterwards)."""
    if path.exists():
        path.unlink()
    fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)


def add_subcommands(subparsers: Any) -> None:
    """Register ``gtl certs`` on the ``gtl`` command."""
    parser = subparsers.add_parser(
        "certs",
        help="make a development CA and a server certificate for the gateway's TLS listeners",
        description="Write ca.pem, server.pem and server-key.pem into DIRECTORY (development use only).",
    )
    parser.add_argument("directory", help="where to write the files (created if missing)")
    parser.add_argument(
        "--name",
        action="append",
        dest="names",
        metavar="NAME",
        help=f"a DNS name or IP address of the server (repeatable; default: {', '.join(DEFAULT_NAMES)})",
    )
    parser.add_argument("--days", type=int, default=30, help="validity in days (default: 30)")
    parser.add_argument(
        "--force",
        action="store_true",
        help="replace the files of an earlier run, the CA among them (clients need the new ca.pem)",
    )
    parser.set_defaults(handler=_certs)


def _certs(args: argparse.Namespace) -> int:
    folder = Path(args.directory)
    there = [name for name in ("ca.pem", "server.pem", "server-key.pem") if (folder / name).exists()]
    if there and not args.force:
        # the CA's key is not kept, so a new server certificate comes with a new CA: every client given
        # the old ca.pem would refuse the gateway ("unable to get local issuer certificate")
        raise ConfigurationError(
            f"{str(folder)!r} already holds {', '.join(there)} of an earlier gtl certs: writing again makes a new "
            "CA (its key is not kept), and every client given the old ca.pem would refuse the gateway; "
            "give --force to replace them (then give clients the new ca.pem), or another directory"
        )
    files = make_dev_certificates(folder, args.names or DEFAULT_NAMES, days=args.days)
    print(f"CA certificate (give it to clients: connect(..., verify={str(files.ca)!r})): {files.ca}")
    print(f"server certificate: {files.certificate}")
    print(f"server key (owner-readable only): {files.key}")
    return 0
