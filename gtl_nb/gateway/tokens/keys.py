"""The keys a policy verifies with: the HS256 shared secret (from an environment variable or an
owner-only file, never a configuration value), a PEM public key, or a JWKS file whose keys rotate by
``kid`` and are re-read when the file changes."""

from __future__ import annotations

import hashlib
import os
import stat
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat, load_pem_public_key
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from gtl_nb.gateway.tokens.claims import MAX_NAME, json_object
from gtl_nb.log import get_logger
from gtl_nb.protocol.errors import ConfigurationError
from gtl_nb.words import looks_like_variable_name

if TYPE_CHECKING:
    from gtl_nb.gateway.tokens.policy import TokenPolicy

log = get_logger("gateway.tokens")

MIN_SECRET_BYTES = 32  # RFC 7518 §3.2: an HS256 key at least as long as the hash
MIN_RSA_BITS = 2048
_MAX_JWKS_BYTES = 1 << 20
_MAX_SECRET_FILE_BYTES = 1 << 16

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey
PublicKey = rsa.RSAPublicKey | ec.EllipticCurvePublicKey


# ----------------------------------------------------------------------------------------------
# Public keys


@dataclass(frozen=True)
class VerificationKey:
    """A public key the gateway verifies signatures with, and the one algorithm it serves."""

    algorithm: str
    key: PublicKey = field(repr=False)
    kid: str | None = None
    fingerprint: str = field(init=False, repr=False, compare=False)
    """``key_fingerprint`` of the key (what a context it verified records in ``verified_by``)."""

    def __post_init__(self) -> None:
        der = self.key.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
        object.__setattr__(self, "fingerprint", key_fingerprint(self.algorithm, der))


def key_fingerprint(algorithm: str, material: bytes) -> str:
    """A one-way name of a verifying key (an HS256 secret's bytes, a public key's DER): the same key
    always gives the same name, and the name gives nothing of the key."""
    return hashlib.sha256(b"gtl-nb verifying key\0" + algorithm.encode() + b"\0" + material).hexdigest()[:32]


def load_public_key_file(path: Path) -> VerificationKey:
    """The RS256 (RSA, 2048 bits or more) or ES256 (P-256) key of a PEM public key file."""
    data = read_limited(path, _MAX_JWKS_BYTES, "public_key_file")
    if b"PRIVATE KEY" in data:
        raise ConfigurationError(
            f"[gateway.jwt] public_key_file {path} holds a private key; give the gateway only the public half "
            "(openssl pkey -in KEY -pubout)"
        )
    try:
        key = load_pem_public_key(data)
    except Exception:
        raise ConfigurationError(f"[gateway.jwt] public_key_file {path} is not a PEM public key") from None
    return VerificationKey(_algorithm_of(key, f"public_key_file {path}"), key)  # type: ignore[arg-type]


def load_jwks(path: Path) -> tuple[VerificationKey, ...]:
    """The signing keys of a JWKS file (RFC 7517), each with its ``kid``.

    Keys for other algorithms or uses are skipped (with a warning); a key with private members, a
    symmetric key, a duplicate or missing ``kid``, or a file with no usable key is a ``ConfigurationError``.
    """
    where = f"[gateway.jwt] jwks_file {path}"
    data = read_limited(path, _MAX_JWKS_BYTES, "jwks_file")
    document = json_object(data)
    if document is None or not isinstance(document.get("keys"), list):
        raise ConfigurationError(f'{where} is not a JSON Web Key Set (an object with a "keys" list)')
    found: dict[str, VerificationKey] = {}
    for index, entry in enumerate(document["keys"]):
        key = _jwks_entry(entry, f"{where}: key {index}")
        if key is None:
            continue
        if key.kid in found:
            raise ConfigurationError(f"{where}: two keys have the kid {key.kid!r}")
        found[key.kid or ""] = key
    if not found:
        raise ConfigurationError(f"{where} has no RS256 or ES256 signing key")
    return tuple(found.values())


def _jwks_entry(entry: Any, where: str) -> VerificationKey | None:
    if not isinstance(entry, dict):
        raise ConfigurationError(f"{where} is not a JSON object")
    private = sorted({"d", "p", "q", "dp", "dq", "qi", "oth", "k"} & set(entry))
    if private:  # never echo them: they are the secret
        raise ConfigurationError(
            f"{where} holds private or symmetric key material ({', '.join(private)}); a JWKS file for the "
            "gateway holds public keys only"
        )
    kid = entry.get("kid")
    if not isinstance(kid, str) or not kid or len(kid) > MAX_NAME:
        raise ConfigurationError(f'{where} has no "kid"; keys rotate by kid, so each needs one')
    kty, alg, use = entry.get("kty"), entry.get("alg"), entry.get("use")
    expected = {"RSA": "RS256", "EC": "ES256"}.get(kty) if isinstance(kty, str) else None
    if use not in (None, "sig") or expected is None or alg not in (None, expected):
        log.warning("%s (kid %r) skipped: only RS256/ES256 signing keys are used", where, kid)
        return None
    if kty == "EC" and entry.get("crv") != "P-256":
        log.warning("%s (kid %r) skipped: ES256 needs the curve P-256", where, kid)
        return None
    try:
        key = (RSAAlgorithm if kty == "RSA" else ECAlgorithm).from_jwk(dict(entry))
    except Exception:
        raise ConfigurationError(f"{where} (kid {kid!r}) is not a valid {kty} public key") from None
    return VerificationKey(_algorithm_of(key, f"{where} (kid {kid!r})"), key, kid)  # type: ignore[arg-type]


def _algorithm_of(key: Any, where: str) -> str:
    if isinstance(key, rsa.RSAPublicKey):
        if key.key_size < MIN_RSA_BITS:
            raise ConfigurationError(f"[gateway.jwt] {where}: an RSA key needs at least {MIN_RSA_BITS} bits")
        return "RS256"
    if isinstance(key, ec.EllipticCurvePublicKey):
        if not isinstance(key.curve, ec.SECP256R1):
            raise ConfigurationError(f"[gateway.jwt] {where}: ES256 needs a P-256 key, not {key.curve.name}")
        return "ES256"
    raise ConfigurationError(f"[gateway.jwt] {where}: only RSA (RS256) and P-256 (ES256) public keys are accepted")


def read_limited(path: Path, limit: int, what: str) -> bytes:
    """The bytes of the ``[gateway.jwt]`` key ``what``'s file ``path``, or a ``ConfigurationError`` when it
    cannot be read or is larger than ``limit``."""
    try:
        with open(path, "rb") as handle:
            data = handle.read(limit + 1)
    except FileNotFoundError:
        raise ConfigurationError(f"[gateway.jwt] {what} {path}: no such file") from None
    except OSError as exc:
        raise ConfigurationError(f"[gateway.jwt] {what} {path}: cannot read it ({exc.strerror})") from None
    if len(data) > limit:
        raise ConfigurationError(f"[gateway.jwt] {what} {path} is larger than {limit} bytes")
    return data


class KeyRing:
    """The policy's public keys, re-read from the JWKS file when it changes (checked every ``refresh`` s)."""

    def __init__(self, policy: TokenPolicy, clock: Callable[[], float]) -> None:
        self._path = policy.jwks_file
        self._refresh = policy.refresh
        self._clock = clock
        self._keys = policy.public_keys
        self._stamp = _stamp(self._path) if self._path is not None else None
        self._checked = clock()
        self._lock = threading.Lock()

    def keys(self) -> tuple[VerificationKey, ...]:
        if self._path is None:
            return self._keys
        now = self._clock()
        with self._lock:
            if now < self._checked or now - self._checked >= self._refresh:
                self._checked = now
                stamp = _stamp(self._path)
                if stamp != self._stamp:
                    try:
                        self._keys = load_jwks(self._path)
                        log.info("JWKS %s re-read: kids %s", self._path, ", ".join(k.kid or "" for k in self._keys))
                    except ConfigurationError as exc:  # a half-written file: keep serving the known keys
                        log.warning("keeping the previous keys: %s", exc)
                    self._stamp = stamp
            return self._keys


def _stamp(path: Path) -> tuple[int, int, int] | None:
    try:
        info = path.stat()
    except OSError:
        return None
    return (info.st_mtime_ns, info.st_size, info.st_ino)


# ----------------------------------------------------------------------------------------------
# The HS256 shared secret


def read_secret(table: Mapping[str, Any], base_dir: Path, environ: Mapping[str, str]) -> tuple[bytes | None, str]:
    """The HS256 secret ``table`` (``[gateway.jwt]``) names and where it came from; the messages never quote
    the secret nor the key's value (a secret pasted where a name belongs must not be echoed either)."""
    name, file_value = table.get("secret_env"), table.get("secret_file")
    if name is not None and file_value is not None:
        raise ConfigurationError("[gateway.jwt] names secret_env and secret_file; choose one")
    if name is not None:
        if not looks_like_variable_name(name):
            raise ConfigurationError(
                "[gateway.jwt] secret_env must name an environment variable (capital letters, digits, _), "
                "not hold the secret itself"
            )
        raw = environ.get(name, "")
        value = raw.strip()
        if not value:
            raise ConfigurationError(f"[gateway.jwt] secret_env: ${name} is not set (or empty)")
        if value != raw:  # whoever else signs with it may not trim it
            log.warning("[gateway.jwt] the secret in $%s had surrounding whitespace; it was removed", name)
        return value.encode(), f"${name}"
    if file_value is not None:
        if not isinstance(file_value, str) or not file_value.strip():
            raise ConfigurationError("[gateway.jwt] secret_file must be a non-empty string (a path)")
        path = base_dir / Path(file_value.strip()).expanduser()
        try:
            info = path.stat()
        except OSError:  # the path is not echoed: a secret pasted here would be
            raise ConfigurationError(
                f"[gateway.jwt] secret_file names no readable file (relative paths start at {base_dir})"
            ) from None
        if os.name == "posix" and info.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise ConfigurationError(
                f"[gateway.jwt] secret_file {path} can be read by other users; make it the owner's only (chmod 600)"
            )
        data = read_limited(path, _MAX_SECRET_FILE_BYTES, "secret_file").strip()
        if not data:
            raise ConfigurationError(f"[gateway.jwt] secret_file {path} is empty")
        return data, f"secret_file {path}"
    return None, "the secret"


def check_secret(secret: bytes, source: str) -> None:
    """A ``ConfigurationError`` unless ``secret`` (from ``source``) can be an HS256 key: long enough, and
    not a public key (the algorithm-confusion attack)."""
    if len(secret) < MIN_SECRET_BYTES:
        raise ConfigurationError(
            f"the HS256 secret in {source} is shorter than {MIN_SECRET_BYTES} bytes; make a random one "
            "(python -c 'import secrets; print(secrets.token_urlsafe(48))')"
        )
    if secret.lstrip().startswith((b"-----BEGIN", b"ssh-", b"ecdsa-sha2-")):
        # a public key used as an HMAC secret is the classic algorithm-confusion attack
        raise ConfigurationError(
            f"the HS256 secret in {source} is a PEM or SSH key; HS256 needs a random shared secret, and public "
            "keys belong in public_key_file or jwks_file"
        )
