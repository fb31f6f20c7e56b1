"""Provider keys from the vault, per request: the gateway's ``CredentialResolver``.

Which stored key a deployment uses:

1. per request, the key the caller's token chooses — its ``provider_keys`` claim maps a deployment
   to a stored key's name; the engine passes that name to ``resolve_for(deployment, key_name)``;
2. otherwise the ``[gateway.vault] keys`` table of the configuration (deployment → stored key name),
   through ``resolve(deployment)``;
3. otherwise the deployment's own credentials, through the ``fallback`` resolver (the environment
   and the TOML file, as without a vault).

The mapping lives in ``[gateway.vault]``, not in ``[providers.*]``: the vault exists only in the
gateway, while the same ``[providers]`` tables also serve the embedded client, which has no vault
and must not find a deployment whose key it cannot get. One table also shows, in one place, every
deployment the vault feeds.

Failures (each names the deployment and the key name, never a value):

* a key the **token** names that the vault does not have (removed: that is how a key is revoked)
  is ``AuthenticationError`` (``AUTH_FAILED``) — the caller's credentials no longer work. The file
  is looked at again first, whatever ``check_interval`` says (but at most every ``FORCED_LOOK_GAP``
  seconds: a token that names a removed key must not make every request read the file): a key added
  a moment ago (and a token minted for it at once) must not be refused as removed until the next
  check;
* a key the token names that is bound to another deployment (``gtl keys add --deployment``) is
  ``PermissionDeniedError`` (``FORBIDDEN``);
* the same two mistakes in the **configuration** are ``ConfigurationError`` — the operator's to fix.
  ``VaultCredentials`` checks the table against the vault when it is built: a table that gives a
  deployment a key bound to another, or names a deployment not configured, stops the start (or the
  reload). A key the table names that the vault does not have — removed, as a leaked key is — does
  not: the gateway warns of it at start and on each reload, naming the deployment and the key, and
  that deployment's requests fail over or end ``PROVIDER_UNAVAILABLE`` (its operator told in the log)
  until the key is added back or the table changed; removing a key must never block the reload that
  follows it. A ``path`` that names no file at all while the table gives stored keys does stop the start
  (a mistyped path would serve a gateway that can call none of them).

How the engine asks (the engine cannot import the gateway; ``resolve_for`` is found by duck typing,
or through a protocol declared in ``engine.credentials``), with the request's context::

    key_name = (context.provider_keys or {}).get(target.name)
    choose = getattr(self.credentials, "resolve_for", None)
    if key_name is not None and choose is None:
        ...  # a token that chooses keys, and no vault: refuse (AUTH_FAILED) rather than use another key
    deployment = choose(target.deployment, key_name) if choose else self.credentials.resolve(target.deployment)

A running gateway notices a changed vault without a restart: at most once per ``check_interval``
seconds a request ``stat``s the vault file (and the master key file) and, when the inode, size or
modification time changed, reads and verifies it again. A file written within the last two seconds
is also re-read byte for byte (a clock tick can hide a second write). A change that cannot be used —
a damaged or tampered file, a master key that does not open it, a lower ``generation`` than the one
loaded (an old copy put back) — is logged as a warning naming the file and the problem, and the keys
loaded before stay in use; ``last_error`` says why, and ``degraded_reason`` puts it in ``/readyz``.
With the master key in a file, a master key
rotation needs no restart either: the gateway reads the key file again when it changes.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import os
import threading
import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gtl_nb.engine.credentials import CredentialResolver, StaticCredentials
from gtl_nb.gateway.vault import (
    DEFAULT_MASTER_KEY_ENV,
    MasterKey,
    MasterKeySource,
    VaultEntry,
    VaultSnapshot,
    check_key_name,
    file_stamp,
    read_snapshot,
    read_vault_file,
)
from gtl_nb.log import get_logger
from gtl_nb.protocol.errors import AuthenticationError, ConfigurationError, PermissionDeniedError
from gtl_nb.providers.base import Deployment

__all__ = ["VAULT_KEYS", "VaultCredentials", "VaultSettings", "default_vault_path"]

log = get_logger("gateway.vault")

VAULT_KEYS = ("path", "master_key_env", "master_key_file", "check_interval", "keys")
"""The keys of ``[gateway.vault]``."""
DEFAULT_CHECK_INTERVAL = 1.0
FORCED_LOOK_GAP = 0.1
"""Seconds between two looks at the file that a token's missing key asks for, at least."""
_RACY_SECONDS = 2.0  # a write this recent may share its mtime with the next one: compare bytes too


def default_vault_path(environ: Mapping[str, str] | None = None) -> Path:
    """``vault.json`` in the user data directory, beside the usage ledger
    (``~/.local/share/gtl_nb/vault.json`` on Linux)."""
    from gtl_nb.engine.ledger import default_ledger_path

    return default_ledger_path(environ).parent / "vault.json"


@dataclass(frozen=True)
class VaultSettings:
    """``[gateway.vault]``, typed.

    ``path`` is the vault file (relative paths are read from the configuration file's folder);
    ``master`` says where the master key comes from (``master_key_file`` when given, else the
    variable ``master_key_env``); ``keys`` maps a deployment to the stored key it uses by default;
    ``check_interval`` is how often, at most, a running gateway looks for a changed file.
    """

    path: Path
    master: MasterKeySource = field(default_factory=MasterKeySource)
    keys: Mapping[str, str] = field(default_factory=dict)
    check_interval: float = DEFAULT_CHECK_INTERVAL

    @classmethod
    def from_table(
        cls, table: Mapping[str, Any] | None, *, base: Path, environ: Mapping[str, str] | None = None
    ) -> VaultSettings:
        """The settings of a ``[gateway.vault]`` table (``None`` or ``{}``: every default), checked key by key."""
        table = {key: value for key, value in (table or {}).items() if value is not None}  # None: not given
        where = "[gateway.vault]"
        unknown = sorted(set(table) - set(VAULT_KEYS))
        if unknown:
            raise ConfigurationError(f"unknown key {unknown[0]!r} in {where} (known: {', '.join(VAULT_KEYS)})")
        for key in ("path", "master_key_env", "master_key_file"):
            if key in table and (not isinstance(table[key], str) or not table[key]):
                raise ConfigurationError(f"{where} {key} must be a non-empty string")
        interval = table.get("check_interval", DEFAULT_CHECK_INTERVAL)
        if isinstance(interval, bool) or not isinstance(interval, (int, float)) or not 0 <= interval <= 3600:
            raise ConfigurationError(f"{where} check_interval must be a number of seconds from 0 to 3600")
        keys = table.get("keys", {})
        if not isinstance(keys, Mapping) or not all(isinstance(v, str) for v in keys.values()):
            raise ConfigurationError(f'{where} keys must map a deployment to a stored key name: {{openai = "team"}}')
        for deployment, name in keys.items():
            check_key_name(name, f"the stored key name for deployment {deployment!r} in {where} keys")
        path = Path(table["path"]).expanduser() if "path" in table else default_vault_path(environ)
        key_file = Path(table["master_key_file"]).expanduser() if "master_key_file" in table else None
        master = MasterKeySource(
            env=table.get("master_key_env", DEFAULT_MASTER_KEY_ENV),
            file=None if key_file is None else base / key_file,
            environ=environ,
        )
        return cls(path=base / path, master=master, keys=dict(keys), check_interval=float(interval))


@dataclass(frozen=True)
class _Loaded:
    """What the resolver serves from, and how it recognises the files it came from."""

    snapshot: VaultSnapshot
    master: MasterKey
    stamp: tuple[Any, ...]
    digest: bytes | None
    racy: bool


class VaultCredentials:
    """A ``CredentialResolver`` whose deployments take their ``api_key`` from the vault.

    Built from the vault file, where its master key comes from, and the configuration's
    deployment → key table (``keys``); deployments the table does not name go to ``fallback``
    (default: unchanged). Construction reads and verifies the vault and checks the table against
    it (and against ``deployments``, the configured names, when given): a ``ConfigurationError``
    stops the gateway before it serves anything.

    The engine calls ``resolve(deployment)`` for a request without a choice of key and
    ``resolve_for(deployment, key_name)`` with the token's ``provider_keys[deployment.name]``.
    Both are cheap (a dictionary look-up; a ``stat`` at most once per ``check_interval``) and
    thread-safe. ``clock`` is the monotonic clock that paces the checks.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        master: MasterKeySource,
        keys: Mapping[str, str] | None = None,
        *,
        fallback: CredentialResolver | None = None,
        deployments: Collection[str] | None = None,
        check_interval: float = DEFAULT_CHECK_INTERVAL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.path = Path(path).expanduser()
        self._source = master
        self._keys = dict(keys or {})
        self._fallback = fallback if fallback is not None else StaticCredentials()
        self._interval = check_interval
        self._clock = clock
        self._lock = threading.Lock()
        self._last_error: str | None = None
        self._refuse_a_missing_file()
        self._loaded = self._load(master.load(), self._stamp(), None)
        self._next_check = clock() + check_interval
        self._next_forced = clock()
        self._check_table(deployments)

    @classmethod
    def from_settings(
        cls,
        settings: VaultSettings,
        *,
        fallback: CredentialResolver | None = None,
        deployments: Collection[str] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> VaultCredentials:
        """The resolver ``[gateway.vault]`` describes."""
        return cls(
            settings.path,
            settings.master,
            settings.keys,
            fallback=fallback,
            deployments=deployments,
            check_interval=settings.check_interval,
            clock=clock,
        )

    def __repr__(self) -> str:
        loaded = self._loaded
        return (
            f"VaultCredentials({str(self.path)!r}, keys={len(loaded.snapshot.entries)}, "
            f"generation={loaded.snapshot.generation}, key_id={loaded.master.key_id!r})"
        )

    @property
    def last_error(self) -> str | None:
        """Why the latest change of the vault was not taken up (``None``: the file in use is current)."""
        return self._last_error

    @property
    def degraded_reason(self) -> str | None:
        """``/readyz``'s line for the vault (and ``gtl_store_degraded{store="vault"}``): why the file on
        disk is not the one in use — damaged, tampered, a key that does not open it, an older copy — or
        ``None`` when it is. Asking looks at the file (a ``stat``, at most once per ``check_interval``),
        so a vault damaged or mended while no request comes is seen too."""
        self._current()
        error = self._last_error
        if error is None:
            return None
        kept = len(self._loaded.snapshot.entries)
        keys = f"{kept} key{'' if kept == 1 else 's'}"
        return f"{error}; serving the {keys} loaded before (a restart would refuse this file)"

    @property
    def generation(self) -> int:
        """The generation of the vault in use."""
        return self._loaded.snapshot.generation

    def resolve(self, deployment: Deployment) -> Deployment:
        """``deployment`` with the key the configuration's table names for it, else as ``fallback`` gives it."""
        name = self._keys.get(deployment.name)
        if name is None:
            return self._fallback.resolve(deployment)
        return self._with_key(deployment, name, chosen_by_token=False)

    def resolve_for(self, deployment: Deployment, key_name: str | None) -> Deployment:
        """``deployment`` with the stored key ``key_name`` (the token's choice); ``None``: as ``resolve``."""
        if key_name is None:
            return self.resolve(deployment)
        return self._with_key(deployment, key_name, chosen_by_token=True)

    def rebound(self, fallback: CredentialResolver, deployments: Collection[str] | None = None) -> VaultCredentials:
        """This open vault over a reloaded configuration: ``fallback`` (built from the new file) serves
        the deployments the key table does not name, a reload's new ones among them. Nothing is read
        again (the master key may have come from a prompt); ``deployments`` re-checks the key table, so
        a reload that drops a deployment the table names is refused."""
        twin = copy.copy(self)
        twin._fallback = fallback
        twin._lock = threading.Lock()
        twin._check_table(deployments)
        return twin

    def missing_key_advice(self, deployment: str) -> str | None:
        """How the vault gives ``deployment`` a key when it has none (the missing-key warning and log line
        name the environment and the file; on a gateway with a vault, its own route first of all) —
        ``None`` for a deployment the ``keys`` table names (its own warning says what is wrong)."""
        if deployment in self._keys:
            return None
        return (
            f"from this gateway's vault: store it (gtl keys add NAME --deployment {deployment}) and give it "
            f'to the deployment in [gateway.vault] keys ({deployment} = "NAME"; a restart applies that table)'
        )

    def refresh(self) -> None:
        """Look for a changed vault now, whatever the interval (the next check is an interval away)."""
        with self._lock:
            self._next_check = self._clock() + self._interval
            self._refresh()

    # -- helpers --------------------------------------------------------------------------------

    def describe_key(self, deployment: Deployment, key_name: str | None = None) -> str | None:
        """What the operator calls the key ``deployment`` carries — ``stored key 'team' (fingerprint
        3f2a9c1d)`` — when it is one of the vault's (``None`` otherwise), for the log line of a provider
        that refused it. ``key_name``: the token's choice for the request, as for ``resolve_for``;
        else the key table's. (The same secret may be stored under two names: the name chosen is
        the one to tell.)"""
        secret = deployment.api_key
        if not secret:
            return None
        entries = self._loaded.snapshot.entries
        chosen = entries.get(key_name or self._keys.get(deployment.name, ""))
        found = chosen if chosen is not None and chosen.secret == secret else None
        if found is None:
            found = next((entry for entry in entries.values() if entry.secret == secret), None)
        return None if found is None else f"stored key {found.info.name!r} (fingerprint {found.info.fingerprint})"

    def _with_key(self, deployment: Deployment, name: str, *, chosen_by_token: bool) -> Deployment:
        snapshot = self._current()
        if chosen_by_token and name not in snapshot.entries and self._clock() >= self._next_forced:
            # added since the last look? (a stat; the file is read only when it changed)
            self._next_forced = self._clock() + FORCED_LOOK_GAP
            self.refresh()
            snapshot = self._loaded.snapshot
        entry = self._entry(snapshot, deployment.name, name, chosen_by_token=chosen_by_token)
        log.debug("deployment %s uses stored key %s (fingerprint %s)", deployment.name, name, entry.info.fingerprint)
        return dataclasses.replace(self._fallback.resolve(deployment), api_key=entry.secret)

    def _entry(self, snapshot: VaultSnapshot, deployment: str, name: str, *, chosen_by_token: bool) -> VaultEntry:
        """The stored key ``name`` for ``deployment``, or the error the module docstring lists."""
        entry = snapshot.entries.get(name)
        if entry is None:
            if chosen_by_token:
                raise AuthenticationError(
                    f"the token chooses stored key {name!r} for deployment {deployment!r}, but the gateway's "
                    "vault has no key of that name (it was removed, or never added)",
                    provider=deployment,
                )
            raise ConfigurationError(
                f"[gateway.vault] keys gives deployment {deployment!r} the stored key {name!r}, which the vault "
                f"{self.path} does not have (removed, or never added): its requests go to another deployment or "
                f"fail until you add it (gtl keys add {name} --deployment {deployment}) or give {deployment!r} "
                "another key in [gateway.vault] keys"
            )
        bound = entry.info.deployment
        if bound is not None and bound != deployment:
            message = f"stored key {name!r} is for deployment {bound!r}, not {deployment!r}"
            if chosen_by_token:
                raise PermissionDeniedError(
                    f"the token chooses stored key {name!r} for deployment {deployment!r}, but that key is for "
                    f"deployment {bound!r}: mint a token whose --provider-key {deployment}= names a key of "
                    f"{deployment!r} (gtl keys list shows which)",
                    provider=deployment,
                )
            raise ConfigurationError(f"[gateway.vault] keys: {message}")
        return entry

    def _check_table(self, deployments: Collection[str] | None) -> None:
        if deployments is not None:
            unknown = sorted(set(self._keys) - set(deployments))
            if unknown:
                raise ConfigurationError(
                    f"[gateway.vault] keys names deployment {unknown[0]!r}, which is not configured "
                    f"(configured: {', '.join(sorted(deployments)) or 'none'})"
                )
        entries = self._loaded.snapshot.entries
        for deployment in sorted(self._keys):
            # a key the vault does not have is no reason to refuse a start or a reload: removing a leaked
            # key must not block the next reload (rotating the JWT secret, say) until the table is edited.
            # The gateway warns of it at start and on each reload (``Settings.missing_credentials``) and
            # the deployment's requests fail over, or end PROVIDER_UNAVAILABLE (``Engine._uncallable``).
            if self._keys[deployment] in entries:
                self._entry(self._loaded.snapshot, deployment, self._keys[deployment], chosen_by_token=False)

    def _refuse_a_missing_file(self) -> None:
        """A start whose ``keys`` table names stored keys, with no vault file at ``path``, is refused: a
        mistyped path (or a vault not copied to this host) would serve a gateway that can call none of
        those deployments, with warnings that the keys were removed. (A key the vault does not have is
        only warned of: removing a leaked key must not block a start.)"""
        if not self._keys or self.path.exists() or self.path.is_symlink():
            return
        named = ", ".join(f"{name!r} for {deployment!r}" for deployment, name in sorted(self._keys.items()))
        raise ConfigurationError(
            f"[gateway.vault] path: no vault file at {self.path}, while [gateway.vault] keys gives stored keys "
            f"({named}): check the path (a relative one is read from the configuration file's folder), or make "
            "the vault there first (gtl keys add NAME --deployment D)"
        )

    def _current(self) -> VaultSnapshot:
        if self._clock() >= self._next_check:
            with self._lock:
                if self._clock() >= self._next_check:  # another thread may have looked meanwhile
                    self._next_check = self._clock() + self._interval
                    self._refresh()
        return self._loaded.snapshot

    def _stamp(self) -> tuple[Any, ...]:
        return (file_stamp(self.path), self._source.stamp())

    def _refresh(self) -> None:
        """Take up a changed vault or master key file; keep the loaded keys when the change is unusable."""
        loaded, stamp = self._loaded, self._stamp()
        if stamp == loaded.stamp and not loaded.racy:
            return
        try:
            fresh = self._load(self._source.load(), stamp, loaded)
        except ConfigurationError as exc:
            # one warning per change; the stamp moves on so an unusable file is not re-read per request
            self._loaded = dataclasses.replace(loaded, stamp=stamp, racy=False)
            if str(exc) != self._last_error:
                log.warning("%s; the gateway keeps the %d keys it loaded before", exc, len(loaded.snapshot.entries))
            self._last_error = str(exc)
            return
        self._loaded = fresh
        if self._last_error is not None:  # said as the trouble was: an operator who saw it sees its end
            log.warning(
                "the vault %s can be used again: %d keys, generation %d, in use from now on",
                self.path,
                len(fresh.snapshot.entries),
                fresh.snapshot.generation,
            )
        self._last_error = None

    def _load(self, master: MasterKey, stamp: tuple[Any, ...], before: _Loaded | None) -> _Loaded:
        """The vault as it is on disk now (``before``'s keys when its bytes and master key are unchanged)."""
        raw = read_vault_file(self.path)
        digest = None if raw is None else hashlib.sha256(raw).digest()
        # (a modification time ahead of this clock — a file server's clock ahead of ours — is not
        # "just written": it would stay so for as long as the clocks differ, and be read at every look)
        racy = stamp[0] is not None and 0 <= time.time() - stamp[0][3] / 1e9 < _RACY_SECONDS
        if before is not None and digest == before.digest and master.key_id == before.master.key_id:
            return dataclasses.replace(before, stamp=stamp, racy=racy)
        snapshot = read_snapshot(raw, master, self.path)
        if before is not None and snapshot.generation < before.snapshot.generation:
            raise ConfigurationError(
                f"the vault {self.path} went back from generation {before.snapshot.generation} to "
                f"{snapshot.generation} (an older copy put back, or the file removed?); a running gateway never "
                "goes back: restart it to use this file"
            )
        log.debug(
            "vault %s: %d keys, generation %d, master key id %s",
            self.path,
            len(snapshot.entries),
            snapshot.generation,
            master.key_id,
        )
        return _Loaded(snapshot=snapshot, master=master, stamp=stamp, digest=digest, racy=racy)
