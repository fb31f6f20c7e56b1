"""The provider-key vault: the file format and its crypto, the master key, atomic and serialised
writes, the credential resolver of a running gateway, ``gtl keys``, and keys that never leak."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import logging
import os
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gtl_nb import sim
from gtl_nb.engine.builder import build_engine
from gtl_nb.engine.credentials import StaticCredentials
from gtl_nb.engine.routing import GATEWAY
from gtl_nb.engine.settings import load_settings
from gtl_nb.gateway.vault import (
    KeyInfo,
    MasterKey,
    MasterKeySource,
    Vault,
    check_key_name,
    generate_master_key,
)
from gtl_nb.gateway.vault_credentials import VaultCredentials, VaultSettings, default_vault_path
from gtl_nb.protocol import CompletionRequest, Done, Message
from gtl_nb.protocol.errors import (
    AuthenticationError,
    ConfigurationError,
    GTLError,
    PermissionDeniedError,
)
from gtl_nb.providers.base import Deployment

# Two canaries: one shaped like a provider key (the log filter would redact it, so it alone could hide a
# leak from a log test) and one the filter does not recognise.
CANARY = "sk-canary-7d1e0c5b9a3f4e21b8c6"
PLAIN_CANARY = "vaultcanary9f8e7d6c5b4a39281706"
ROOT = Path(__file__).resolve().parents[2]


class FakeClock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def master_text() -> str:
    return generate_master_key()


@pytest.fixture
def master(master_text: str) -> MasterKey:
    return MasterKey.from_text(master_text, "$TEST_VAULT_KEY")


@pytest.fixture
def vault(tmp_path: Path, master: MasterKey) -> Vault:
    return Vault(tmp_path / "vault" / "vault.json", master, wall_clock=lambda: 1_700_000_000.0)


def filled(vault: Vault) -> Vault:
    vault.add("team-openai", CANARY, "openai")
    vault.add("shared", PLAIN_CANARY)
    return vault


def rewrite(path: Path, change: Any) -> None:
    """Edit the vault file as an attacker with write access would: parse, change, write back."""
    envelope = json.loads(path.read_text())
    change(envelope)
    path.write_text(json.dumps(envelope, indent=2) + "\n")


def private_key_file(path: Path, text: str, mode: int = 0o600) -> Path:
    path.write_text(text + "\n")
    path.chmod(mode)
    return path


# ----------------------------------------------------------------------------------------------
# The vault file


def test_round_trip(vault: Vault, master_text: str):
    info = vault.add("team-openai", f"  {CANARY}\n", "openai")  # a pasted newline is removed
    assert info == KeyInfo("team-openai", "openai", hashlib.sha256(CANARY.encode()).hexdigest()[:8], info.created)
    assert info.created == "2023-11-14T22:13:20Z" and info.rotated is None
    vault.add("shared", PLAIN_CANARY)
    assert [i.name for i in vault.list()] == ["shared", "team-openai"]
    again = Vault(vault.path, MasterKey.from_text(master_text, "$OTHER_NAME"))  # as another process would
    assert again.get("team-openai") == CANARY and again.get("shared") == PLAIN_CANARY
    assert again.snapshot().generation == 2

    replaced = vault.add("team-openai", PLAIN_CANARY + "x", replace=True)
    assert replaced.created == info.created and replaced.rotated == info.created and replaced.deployment == "openai"
    assert vault.get("team-openai") == PLAIN_CANARY + "x"
    with pytest.raises(ConfigurationError, match="already has a key named 'shared'"):
        vault.add("shared", "other")
    assert vault.remove("shared").name == "shared"
    assert [i.name for i in vault.list()] == ["team-openai"]
    with pytest.raises(ConfigurationError, match=r"no key named 'shared' \(stored: team-openai\)"):
        vault.get("shared")


def test_a_missing_vault_is_empty_and_the_first_write_creates_it_private(vault: Vault):
    assert vault.list() == () and not vault.path.exists()
    vault.add("k1", "secret-one")
    assert stat.S_IMODE(vault.path.stat().st_mode) == 0o600
    assert stat.S_IMODE(vault.path.parent.stat().st_mode) == 0o700
    assert stat.S_IMODE(vault.path.with_name("vault.json.lock").stat().st_mode) == 0o600
    envelope = json.loads(vault.path.read_text())
    assert set(envelope) == {"format", "version", "key_id", "generation", "keys", "mac"}
    assert envelope["format"] == "gtl-nb-vault" and envelope["version"] == 1
    assert envelope["key_id"] == vault.master.key_id and envelope["generation"] == 1


def test_every_write_uses_fresh_nonces(vault: Vault):
    vault.add("k1", "secret-one")
    first = json.loads(vault.path.read_text())["keys"]["k1"]
    vault.add("k2", "secret-two")
    second = json.loads(vault.path.read_text())["keys"]["k1"]
    assert first["nonce"] != second["nonce"] and first["ciphertext"] != second["ciphertext"]
    assert len(base64.b64decode(first["nonce"])) == 12


def test_names_are_checked_and_a_key_shaped_name_is_refused_unquoted(vault: Vault):
    for bad in ("", "-lead", "has space", "x" * 65, "ünï"):
        with pytest.raises(ConfigurationError, match="not allowed"):
            vault.add(bad, "secret")
    with pytest.raises(ConfigurationError, match="looks like a provider key") as caught:
        check_key_name(CANARY)
    assert CANARY not in str(caught.value)
    with pytest.raises(ConfigurationError, match="empty"):
        vault.add("k", "  \n")
    with pytest.raises(ConfigurationError, match="control character") as caught:
        vault.add("k", PLAIN_CANARY + "\x01x")
    assert PLAIN_CANARY not in str(caught.value)


# ----------------------------------------------------------------------------------------------
# Damage and tampering


def test_every_single_bit_flip_is_an_error(vault: Vault):
    filled(vault)
    good = vault.path.read_bytes()
    for index in range(len(good)):
        for bit in (0x01, 0x20):
            damaged = bytearray(good)
            damaged[index] ^= bit
            vault.path.write_bytes(bytes(damaged))
            with pytest.raises(ConfigurationError) as caught:
                vault.list()
            assert str(vault.path) in str(caught.value)
    vault.path.write_bytes(good)
    assert len(vault.list()) == 2


def test_a_truncated_file_is_an_error_naming_the_file(vault: Vault):
    filled(vault)
    good = vault.path.read_bytes()
    for size in (0, 1, len(good) // 2, len(good) - 3):
        vault.path.write_bytes(good[:size])
        with pytest.raises(ConfigurationError, match="damaged or truncated") as caught:
            vault.list()
        assert str(vault.path) in str(caught.value)


def test_a_record_moved_to_another_name_does_not_decrypt(vault: Vault):
    filled(vault)

    def swap(envelope: dict[str, Any]) -> None:
        keys = envelope["keys"]
        for field in ("nonce", "ciphertext", "fingerprint", "deployment"):
            keys["shared"][field] = keys["team-openai"][field]

    rewrite(vault.path, swap)
    with pytest.raises(ConfigurationError, match="key 'shared' fails its authentication check"):
        vault.get("team-openai")


def test_edited_metadata_does_not_decrypt(vault: Vault):
    filled(vault)
    rewrite(vault.path, lambda e: e["keys"]["team-openai"].update(deployment="evil"))
    with pytest.raises(ConfigurationError, match="key 'team-openai' fails its authentication check"):
        vault.list()


def test_a_removed_or_restored_record_breaks_the_files_mac(vault: Vault):
    filled(vault)
    before = json.loads(vault.path.read_text())
    rewrite(vault.path, lambda e: e["keys"].pop("shared"))
    with pytest.raises(ConfigurationError, match="changed outside gtl keys"):
        vault.list()
    vault.path.write_text(json.dumps(before))
    vault.remove("shared")  # a record of an older file copied back in: every record decrypts, the mac does not
    rewrite(vault.path, lambda e: e["keys"].update(shared=before["keys"]["shared"]))
    with pytest.raises(ConfigurationError, match="changed outside gtl keys"):
        vault.list()


def test_other_files_are_clear_errors(vault: Vault):
    vault.path.parent.mkdir(parents=True)
    cases = {
        b"[" * 100_000: "nested too deeply",
        b"\xff\xfe": "not valid JSON",
        b'{"format": "something else"}': "is not a gtl_nb vault file",
        b'{"format": "gtl-nb-vault", "version": 2}': "format version 2, written by a newer gtl_nb",
        b'{"format": "gtl-nb-vault", "version": 1}': "its fields are not those of a vault file",
    }
    for content, problem in cases.items():
        vault.path.write_bytes(content)
        with pytest.raises(ConfigurationError, match=problem):
            vault.list()


def test_the_wrong_master_key_names_both_key_ids_and_no_key(vault: Vault, master_text: str):
    filled(vault)
    other_text = generate_master_key()
    other = MasterKey.from_text(other_text, "$OTHER_KEY")
    with pytest.raises(ConfigurationError) as caught:
        Vault(vault.path, other).list()
    message = str(caught.value)
    assert vault.master.key_id in message and other.key_id in message and "$OTHER_KEY" in message
    assert str(vault.path) in message
    assert other_text not in message and master_text not in message


# ----------------------------------------------------------------------------------------------
# Writing: atomic and serialised


def test_a_failed_write_leaves_the_old_vault_and_no_temporary_file(vault: Vault, monkeypatch: pytest.MonkeyPatch):
    filled(vault)
    good = vault.path.read_bytes()

    def crash(*_args: Any) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("gtl_nb.gateway.vault.os.replace", crash)
    with pytest.raises(ConfigurationError, match=r"cannot write the vault .* \(No space left"):
        vault.add("third", "secret-three")
    monkeypatch.undo()
    assert vault.path.read_bytes() == good and [i.name for i in vault.list()] == ["shared", "team-openai"]
    assert sorted(p.name for p in vault.path.parent.iterdir()) == ["vault.json", "vault.json.lock"]


def test_a_process_killed_mid_write_leaves_the_old_vault(vault: Vault, master_text: str):
    filled(vault)
    good = vault.path.read_bytes()
    script = (
        "import os, sys\n"
        "from gtl_nb.gateway import vault as v\n"
        "v.os.fsync = lambda fd: os._exit(9)\n"  # dies after writing the new file, before renaming it
        "key = v.MasterKey.from_text(sys.argv[2], 'k')\n"
        "v.Vault(sys.argv[1], key).add('third', 'secret-three')\n"
    )
    done = subprocess.run([sys.executable, "-c", script, str(vault.path), master_text], capture_output=True)
    assert done.returncode == 9
    assert vault.path.read_bytes() == good and len(vault.list()) == 2
    vault.add("third", "secret-three")  # the lock is free again; a stray temporary file is harmless
    assert len(vault.list()) == 3


def test_concurrent_writers_lose_nothing(vault: Vault, master: MasterKey):
    vault.add("seed", "secret-seed")
    errors: list[BaseException] = []

    def add(index: int) -> None:
        try:
            Vault(vault.path, master).add(f"k{index}", f"secret-{index}")
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=add, args=(i,)) for i in range(12)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    snapshot = vault.snapshot()
    assert len(snapshot.entries) == 13 and snapshot.generation == 13


# ----------------------------------------------------------------------------------------------
# The master key


def test_master_key_rotation(vault: Vault, master: MasterKey):
    filled(vault)
    new_text = generate_master_key()
    new = MasterKey.from_text(new_text, "$NEW")
    with pytest.raises(ConfigurationError, match="is the vault's current master key"):
        vault.rotate_master(master)
    assert vault.rotate_master(new) == 2
    assert vault.master is new and vault.get("team-openai") == CANARY
    with pytest.raises(ConfigurationError, match="written with the master key whose id is"):
        Vault(vault.path, master).list()
    assert Vault(vault.path, MasterKey.from_text(new_text, "x")).get("shared") == PLAIN_CANARY
    with pytest.raises(ConfigurationError, match="written with the master key"):  # the old key cannot rotate it
        Vault(vault.path, master).rotate_master(MasterKey.from_text(generate_master_key(), "y"))


def test_master_key_text_forms(master_text: str):
    raw = base64.urlsafe_b64decode(master_text)
    standard = base64.b64encode(raw).decode()
    unpadded = master_text.rstrip("=")
    ids = {MasterKey.from_text(text, "s").key_id for text in (master_text, standard, unpadded, f" {master_text}\n")}
    assert len(ids) == 1 and len(ids.pop()) == 16
    for bad in ("", "not base64 at all!", base64.b64encode(b"short").decode(), PLAIN_CANARY):
        with pytest.raises(ConfigurationError, match=r"\$K is not a vault master key") as caught:
            MasterKey.from_text(bad, "$K")
        assert PLAIN_CANARY not in str(caught.value)
    key = MasterKey.from_text(master_text, "$K")
    assert master_text not in repr(key) and master_text not in str(key)
    with pytest.raises(TypeError):
        import pickle

        pickle.dumps(key)


def test_a_master_key_pasted_for_its_variables_name_is_never_quoted(tmp_path: Path, master_text: str):
    """``master_key_env = "<the master key>"`` gave "no vault master key: $<the key> is not set". The
    variable is named only when it has a variable name's usual shape; a lowercase name still works."""
    for make in (
        lambda: VaultSettings.from_table({"master_key_env": master_text}, base=tmp_path, environ={}).master.load(),
        lambda: MasterKeySource(env=master_text, environ={}).load(),
    ):
        with pytest.raises(ConfigurationError, match="the variable master_key_env names is not set") as caught:
            make()
        assert master_text not in caught.value.message and "is the key itself there" in caught.value.message
    lower = MasterKeySource(env="my_vault_key", environ={"my_vault_key": master_text})
    assert lower.load().key_id == MasterKey.from_text(master_text, "x").key_id


def test_master_key_sources(tmp_path: Path, master_text: str):
    with pytest.raises(ConfigurationError, match=r"\$MISSING is not set"):
        MasterKeySource(env="MISSING", environ={}).load()
    assert MasterKeySource(env="K", environ={"K": master_text}).load().source == "$K"
    for mode in (0o600, 0o400):
        path = private_key_file(tmp_path / f"key{mode:o}", master_text, mode)
        assert MasterKeySource(file=path).load().key_id == MasterKey.from_text(master_text, "x").key_id
    with pytest.raises(ConfigurationError, match="cannot read the vault master key file"):
        MasterKeySource(file=tmp_path / "absent").load()
    with pytest.raises(ConfigurationError, match="is not a regular file"):
        MasterKeySource(file=tmp_path).load()


@pytest.mark.skipif(os.name != "posix", reason="POSIX permissions")
@pytest.mark.parametrize("mode", [0o640, 0o604, 0o660, 0o644])
def test_a_master_key_file_others_can_read_is_refused(tmp_path: Path, master_text: str, mode: int):
    path = private_key_file(tmp_path / "vault.key", master_text, mode)
    with pytest.raises(ConfigurationError) as caught:
        MasterKeySource(file=path).load()
    message = str(caught.value)
    assert f"mode {mode:04o}" in message and f"chmod 600 {path}" in message and master_text not in message


# ----------------------------------------------------------------------------------------------
# The resolver


def openai() -> Deployment:
    return Deployment(name="openai", type="openai", base_url="https://api.example")


@pytest.fixture
def key_file(tmp_path: Path, master_text: str) -> Path:
    return private_key_file(tmp_path / "vault.key", master_text)


def resolver(vault: Vault, key_file: Path, clock: FakeClock, **kwargs: Any) -> VaultCredentials:
    keys = kwargs.pop("keys", {"openai": "team-openai"})
    return VaultCredentials(vault.path, MasterKeySource(file=key_file), keys, clock=clock, check_interval=5, **kwargs)


def test_the_resolver_gives_the_mapped_key_and_falls_back_for_others(vault: Vault, key_file: Path):
    filled(vault)
    credentials = resolver(vault, key_file, FakeClock())
    resolved = credentials.resolve(openai())
    assert resolved.api_key == CANARY and resolved.base_url == "https://api.example"
    other = Deployment(name="anthropic", type="anthropic", api_key="from-config")
    assert credentials.resolve(other) is other
    assert credentials.resolve_for(openai(), None).api_key == CANARY
    assert credentials.resolve_for(openai(), "shared").api_key == PLAIN_CANARY


def test_the_token_choosing_a_missing_or_foreign_key(vault: Vault, key_file: Path):
    filled(vault)
    vault.add("azure-only", "secret-azure", "azure-east")
    credentials = resolver(vault, key_file, FakeClock())
    with pytest.raises(AuthenticationError, match="stored key 'gone' for deployment 'openai'") as missing:
        credentials.resolve_for(openai(), "gone")
    assert missing.value.code == "AUTH_FAILED" and missing.value.provider == "openai"
    with pytest.raises(
        PermissionDeniedError,
        match="chooses stored key 'azure-only' for deployment 'openai', but that key is for deployment 'azure-east'",
    ):
        credentials.resolve_for(openai(), "azure-only")


def test_a_key_added_a_moment_ago_is_found_for_the_token_that_chooses_it(vault: Vault, key_file: Path):
    # gtl keys add, then gtl token mint --provider-key, then the first request: all within check_interval
    filled(vault)
    clock = FakeClock()
    credentials = resolver(vault, key_file, clock)
    vault.add("fresh", "sk-fresh-0123456789abcdef", "openai")
    assert credentials.resolve_for(openai(), "fresh").api_key == "sk-fresh-0123456789abcdef"  # clock unmoved
    with pytest.raises(AuthenticationError, match=r"no key of that name \(it was removed, or never added\)"):
        credentials.resolve_for(openai(), "never-added")
    assert credentials.last_error is None


def test_a_token_naming_a_missing_key_cannot_make_every_request_read_the_vault(
    vault: Vault, key_file: Path, monkeypatch: pytest.MonkeyPatch
):
    filled(vault)
    clock = FakeClock()
    credentials = resolver(vault, key_file, clock)
    looks: list[float] = []
    refresh = credentials.refresh
    monkeypatch.setattr(credentials, "refresh", lambda: (looks.append(clock.now), refresh())[1])
    for _ in range(50):  # a burst of requests with a token whose key was removed
        with pytest.raises(AuthenticationError):
            credentials.resolve_for(openai(), "removed")
    clock.now = 0.05
    with pytest.raises(AuthenticationError):
        credentials.resolve_for(openai(), "removed")
    clock.now = 0.1
    with pytest.raises(AuthenticationError):
        credentials.resolve_for(openai(), "removed")
    assert looks == [0.0, 0.1]  # one forced look every FORCED_LOOK_GAP at most


def test_a_vault_file_dated_ahead_of_this_clock_is_not_read_at_every_look(vault: Vault, key_file: Path):
    # an NFS server whose clock runs ahead: the file seems written "just now" for as long as that lasts
    filled(vault)
    ahead = time.time() + 3600
    os.utime(vault.path, (ahead, ahead))
    credentials = resolver(vault, key_file, FakeClock())
    assert credentials._loaded.racy is False


def test_the_key_a_provider_refused_is_named_in_the_operators_log(
    vault: Vault, key_file: Path, caplog: pytest.LogCaptureFixture
):
    # several stored keys: the operator must learn which one the provider refused (never its value)
    filled(vault)
    credentials = resolver(vault, key_file, FakeClock())
    fingerprint = hashlib.sha256(CANARY.encode()).hexdigest()[:8]
    assert (
        credentials.describe_key(credentials.resolve(openai()))
        == f"stored key 'team-openai' (fingerprint {fingerprint})"
    )
    assert credentials.describe_key(Deployment(name="openai", type="openai", api_key="from-config")) is None
    # the same secret under two names: the one chosen (by the token, else the key table) is named
    vault.add("team-openai-copy", CANARY, "openai")
    credentials.refresh()
    copy_named = f"stored key 'team-openai-copy' (fingerprint {fingerprint})"
    assert (
        credentials.describe_key(credentials.resolve(openai()))
        == f"stored key 'team-openai' (fingerprint {fingerprint})"
    )
    assert (
        credentials.describe_key(credentials.resolve_for(openai(), "team-openai-copy"), "team-openai-copy")
        == copy_named
    )
    server = sim.serve("openai", seed=3, api_key="sk-the-provider-wants-another-0123")
    try:
        settings = load_settings(
            providers={"openai": {"base_url": server.base_url, "api_key_env": "GTL_TEST_UNSET"}}, environ={}
        )
        caplog.set_level(logging.WARNING, logger="gtl_nb")
        events = one_request(build_engine(settings, ledger=False, credentials=credentials, audience=GATEWAY))
    finally:
        server.close()
    assert events[-1].code == "AUTH_FAILED", events[-1]
    said = [
        record.getMessage() for record in caplog.records if "refused the gateway's credentials" in record.getMessage()
    ]
    assert said and all(f"(stored key 'team-openai' (fingerprint {fingerprint}))" in line for line in said), said
    assert not any(CANARY in record.getMessage() for record in caplog.records)


def test_a_wrong_table_stops_the_gateway_before_it_starts(vault: Vault, key_file: Path):
    filled(vault)
    with pytest.raises(ConfigurationError, match="'team-openai' is for deployment 'openai', not 'azure'"):
        resolver(vault, key_file, FakeClock(), keys={"azure": "team-openai"})
    with pytest.raises(ConfigurationError, match="names deployment 'typo', which is not configured"):
        resolver(vault, key_file, FakeClock(), keys={"typo": "shared"}, deployments=["openai"])
    vault.path.write_bytes(b"{")
    with pytest.raises(ConfigurationError, match="damaged or truncated"):
        resolver(vault, key_file, FakeClock())


def test_a_deployment_the_key_table_forgot_is_told_the_vaults_route_too(vault: Vault, key_file: Path):
    """A vault gateway whose ``keys`` table left a deployment out was told to set ANTHROPIC_API_KEY or an
    api_key in the file — the routes the docs advise against — never the vault's own."""
    from gtl_nb.engine.core import _check_credentials

    filled(vault)
    settings = load_settings(
        providers={"openai": {"api_key_env": "GTL_TEST_UNSET"}, "anthropic": {"type": "anthropic"}}, environ={}
    )
    credentials = resolver(vault, key_file, FakeClock(), deployments=["echo", "openai", "anthropic"])
    (problem,) = settings.missing_credentials(credentials.resolve)  # what gtl serve and a reload warn
    assert problem.startswith("deployment 'anthropic' (anthropic) is missing api_key: set ANTHROPIC_API_KEY"), problem
    assert "gtl keys add NAME --deployment anthropic" in problem and "[gateway.vault] keys" in problem, problem
    assert 'anthropic = "NAME"' in problem
    without_key = credentials.resolve(settings.deployments["anthropic"])
    with pytest.raises(ConfigurationError) as logged:  # the log line of its first request
        _check_credentials(without_key, credentials)
    assert "gtl keys add NAME --deployment anthropic" in logged.value.message, logged.value.message
    # without a vault, the advice is what it was
    (plain,) = [each for each in settings.missing_credentials() if "'anthropic'" in each]
    assert "gtl keys" not in plain and "[gateway.vault]" not in plain


def test_a_key_the_table_names_that_the_vault_lacks_is_warned_of_and_never_blocks_a_start_or_reload(
    vault: Vault, key_file: Path
):
    """``gtl keys remove`` of a leaked key the table still names: the gateway starts and reloads (the
    reload that rotates the JWT secret must not wait for the table's edit), warns naming the deployment
    and the key and what to do, and that deployment's requests fail (``Engine._uncallable``)."""
    filled(vault)
    settings = load_settings(providers={"openai": {"api_key_env": "GTL_TEST_UNSET"}}, environ={})
    credentials = resolver(vault, key_file, FakeClock(), keys={"openai": "nope"}, deployments=["echo", "openai"])
    credentials.rebound(StaticCredentials(), ["echo", "openai"])  # a reload is not refused either
    (problem,) = settings.missing_credentials(credentials.resolve)  # what gtl serve and a reload print
    assert "deployment 'openai' the stored key 'nope'" in problem and "does not have" in problem
    assert "gtl keys add nope --deployment openai" in problem and "[gateway.vault] keys" in problem
    assert CANARY not in problem
    with pytest.raises(ConfigurationError, match="stored key 'nope'"):
        credentials.resolve(openai())  # the engine's uncallable deployment: it fails over or ends retryably


def test_a_running_gateway_picks_up_a_changed_vault_without_a_restart(vault: Vault, key_file: Path):
    filled(vault)
    clock = FakeClock()
    credentials = resolver(vault, key_file, clock)
    assert credentials.resolve(openai()).api_key == CANARY
    vault.add("team-openai", "sk-rotated-0123456789abcdef", replace=True)
    clock.now = 4.9
    assert credentials.resolve(openai()).api_key == CANARY  # checked at most once per check_interval
    clock.now = 5.0
    assert credentials.resolve(openai()).api_key == "sk-rotated-0123456789abcdef"
    vault.remove("shared")  # removing a key revokes it for the tokens that chose it
    credentials.refresh()
    with pytest.raises(AuthenticationError):
        credentials.resolve_for(openai(), "shared")
    assert credentials.generation == 4 and credentials.last_error is None


def test_an_unusable_change_keeps_the_loaded_keys_and_says_why_once(
    vault: Vault, key_file: Path, caplog: pytest.LogCaptureFixture
):
    filled(vault)
    good = vault.path.read_bytes()
    credentials = resolver(vault, key_file, FakeClock())
    caplog.set_level(logging.WARNING, logger="gtl_nb")
    vault.path.write_bytes(good[:-40])
    for _ in range(3):
        credentials.refresh()
        assert credentials.resolve_for(openai(), "shared").api_key == PLAIN_CANARY
    assert "damaged or truncated" in (credentials.last_error or "")
    warnings = [r for r in caplog.records if "keeps the 2 keys" in r.getMessage()]
    assert len(warnings) == 1 and str(vault.path) in warnings[0].getMessage()
    vault.path.write_bytes(good)
    credentials.refresh()
    assert credentials.last_error is None


def test_a_running_gateway_never_goes_back_to_an_older_file(vault: Vault, key_file: Path):
    filled(vault)
    older = vault.path.read_bytes()  # generation 2, with "shared"
    credentials = resolver(vault, key_file, FakeClock())
    vault.remove("shared")
    credentials.refresh()
    vault.path.write_bytes(older)  # an attacker (or a careless restore) puts the revoked key back
    credentials.refresh()
    assert "went back from generation 3 to 2" in (credentials.last_error or "")
    with pytest.raises(AuthenticationError):
        credentials.resolve_for(openai(), "shared")


def test_a_master_key_rotation_reaches_a_running_gateway_through_its_key_file(vault: Vault, key_file: Path):
    filled(vault)
    credentials = resolver(vault, key_file, FakeClock())
    new_text = generate_master_key()
    vault.rotate_master(MasterKey.from_text(new_text, "new"))
    credentials.refresh()  # the vault is under the new key, the key file still holds the old one
    assert "written with the master key" in (credentials.last_error or "")
    assert credentials.resolve(openai()).api_key == CANARY
    replacement = private_key_file(key_file.with_name("next.key"), new_text)
    os.replace(replacement, key_file)
    vault.add("team-openai", "sk-after-rotation-0123456789", replace=True)
    credentials.refresh()
    assert credentials.last_error is None
    assert credentials.resolve(openai()).api_key == "sk-after-rotation-0123456789"


def one_request(engine: Any) -> list[Any]:
    """The events of one request to the deployment ``openai`` through ``engine``, which is closed after."""
    request = CompletionRequest(
        session_id="s1", model="openai:gpt-4o-mini", messages=[Message(role="user", content="hi")]
    )

    async def run() -> list[Any]:
        try:
            return [event async for event in engine.stream(request)]
        finally:
            await engine.aclose()

    return asyncio.run(run())


def test_the_engine_sends_the_vaults_key(vault: Vault, key_file: Path):
    secret = "sim-vault-key-0123456789abcdef"
    vault.add("team-openai", secret, "openai")
    server = sim.serve("openai", seed=3, api_key=secret)
    try:
        settings = load_settings(
            providers={"openai": {"base_url": server.base_url, "api_key_env": "GTL_TEST_UNSET"}}, environ={}
        )
        credentials = resolver(vault, key_file, FakeClock(), deployments=settings.deployments)
        events = one_request(build_engine(settings, ledger=False, credentials=credentials))
    finally:
        server.close()
    assert isinstance(events[-1], Done), events[-1]


def test_vault_settings_from_the_configuration_table(tmp_path: Path):
    defaults = VaultSettings.from_table(None, base=tmp_path, environ={"XDG_DATA_HOME": str(tmp_path / "data")})
    assert defaults.path == tmp_path / "data" / "gtl_nb" / "vault.json"
    assert defaults.master == MasterKeySource() and defaults.keys == {} and defaults.check_interval == 1.0
    table = {
        "path": "secrets/vault.json",
        "master_key_file": "vault.key",
        "master_key_env": "IGNORED_WHEN_A_FILE_IS_GIVEN",
        "check_interval": 0.25,
        "keys": {"openai": "team-openai"},
    }
    settings = VaultSettings.from_table(table, base=tmp_path)
    assert settings.path == tmp_path / "secrets" / "vault.json" and settings.master.file == tmp_path / "vault.key"
    assert settings.keys == {"openai": "team-openai"} and settings.check_interval == 0.25
    assert default_vault_path({"XDG_DATA_HOME": "/srv/data"}) == Path("/srv/data/gtl_nb/vault.json")
    for bad, problem in (
        ({"pth": "x"}, "unknown key 'pth'"),
        ({"path": ""}, "path must be a non-empty string"),
        ({"check_interval": -1}, "check_interval"),
        ({"keys": {"openai": 3}}, "keys must map"),
        ({"keys": {"openai": "bad name"}}, "not allowed"),
    ):
        with pytest.raises(ConfigurationError, match=problem):
            VaultSettings.from_table(bad, base=tmp_path)


# ----------------------------------------------------------------------------------------------
# gtl keys


def keys(*args: str, env: dict[str, str], stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gtl_nb", "keys", *args],
        input=stdin,
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=30,
    )


@pytest.fixture
def cli_env(tmp_path: Path, master_text: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GTL_NB_")}
    env.update(GTL_TEST_VAULT_KEY=master_text, XDG_DATA_HOME=str(tmp_path / "data"))
    env["XDG_CONFIG_HOME"] = str(tmp_path / "config")
    return env


def test_gtl_keys_add_list_remove_rotate(tmp_path: Path, cli_env: dict[str, str], master_text: str):
    where = ["--vault", str(tmp_path / "v.json"), "--key-env", "GTL_TEST_VAULT_KEY"]
    added = keys("add", "team-openai", "--deployment", "openai", *where, env=cli_env, stdin=CANARY + "\n")
    assert added.returncode == 0, added.stderr
    assert "added key 'team-openai' for deployment openai" in added.stdout
    assert keys("add", "shared", *where, env=cli_env, stdin=PLAIN_CANARY).returncode == 0
    empty = keys("add", "empty", *where, env=cli_env, stdin="\n")
    assert empty.returncode == 2 and "no secret for key 'empty' on standard input" in empty.stderr

    listed = keys("list", *where, env=cli_env)
    assert listed.returncode == 0
    assert listed.stdout.splitlines()[0].split() == ["NAME", "DEPLOYMENT", "FINGERPRINT", "CREATED", "ROTATED"]
    assert [line.split()[0] for line in listed.stdout.splitlines()[1:]] == ["shared", "team-openai"]
    rows = [json.loads(line) for line in keys("list", "--json", *where, env=cli_env).stdout.splitlines()]
    assert rows[1] == {**rows[1], "name": "team-openai", "deployment": "openai"}

    removed = keys("remove", "shared", *where, env=cli_env)
    assert removed.returncode == 0 and "removed key 'shared'" in removed.stdout
    missing = keys("remove", "shared", *where, env=cli_env)
    assert missing.returncode == 2 and "no key named 'shared'" in missing.stderr

    new_key = tmp_path / "new.key"
    made = keys("genkey", "--out", str(new_key), env=cli_env)
    assert made.returncode == 0 and stat.S_IMODE(new_key.stat().st_mode) == 0o600
    assert keys("genkey", "--out", str(new_key), env=cli_env).returncode == 2  # never overwritten
    rotated = keys("rotate", *where, "--new-key-file", str(new_key), env=cli_env)
    assert rotated.returncode == 0 and "encrypted 1 key(s)" in rotated.stdout, rotated.stderr
    stale = keys("list", *where, env=cli_env)
    assert stale.returncode == 2 and "written with the master key whose id is" in stale.stderr
    fresh = keys("list", "--vault", str(tmp_path / "v.json"), "--key-file", str(new_key), env=cli_env)
    assert fresh.returncode == 0 and "team-openai" in fresh.stdout
    everything = [added, listed, removed, rotated, stale, fresh, empty, missing]
    for done in everything:
        assert CANARY not in done.stdout + done.stderr and PLAIN_CANARY not in done.stdout + done.stderr
        assert master_text not in done.stdout + done.stderr


def test_gtl_keys_uses_the_default_vault_and_variable(tmp_path: Path, cli_env: dict[str, str], master_text: str):
    cli_env["GTL_NB_VAULT_KEY"] = master_text
    assert keys("add", "k", env=cli_env, stdin="secret-k").returncode == 0
    assert (tmp_path / "data" / "gtl_nb" / "vault.json").is_file()
    printed = keys("genkey", env=cli_env)
    assert MasterKey.from_text(printed.stdout, "printed").key_id
    del cli_env["GTL_NB_VAULT_KEY"]
    refused = keys("list", env=cli_env)
    assert refused.returncode == 2 and "$GTL_NB_VAULT_KEY is not set" in refused.stderr


def test_the_command_line_has_no_way_to_pass_a_secret(tmp_path: Path, cli_env: dict[str, str]):
    """A secret typed on the command line is refused without being echoed back (argparse's "unrecognized
    arguments" would print it), and nothing is stored."""
    where = ["--vault", str(tmp_path / "v.json"), "--key-env", "GTL_TEST_VAULT_KEY"]
    shapes = (
        [CANARY],
        ["--secret", CANARY],
        [CANARY, "--replace"],
        ["--deployment", "d", CANARY],
        ["--replace", CANARY],
        ["--", CANARY],
        [f"--password={CANARY}"],
        ["-k", CANARY],
        ["--deployment", CANARY],  # a key pasted where the deployment's name goes
    )
    for typed in shapes:
        refused = keys("add", "team-openai", *typed, *where, env=cli_env, stdin="")
        assert refused.returncode == 2, (typed, refused.stderr)
        assert CANARY not in refused.stdout + refused.stderr, typed
        assert "nothing was stored" in refused.stderr, (typed, refused.stderr)
    assert not (tmp_path / "v.json").exists()


# ----------------------------------------------------------------------------------------------
# Canaries: a key never leaks


def _failures(vault: Vault, key_file: Path, master_text: str) -> Iterator[BaseException]:
    """Every failure the vault and the resolver can raise, with the canaries stored."""
    good = vault.path.read_bytes()
    attempts = [
        lambda: vault.path.write_bytes(good[: len(good) // 2]),
        lambda: rewrite(vault.path, lambda e: e["keys"]["shared"].update(nonce=e["keys"]["team-openai"]["nonce"])),
        lambda: rewrite(vault.path, lambda e: e["keys"].pop("shared")),
        lambda: rewrite(vault.path, lambda e: e.update(key_id="0" * 16)),
    ]
    for damage in attempts:
        vault.path.write_bytes(good)
        damage()
        with pytest.raises(GTLError) as caught:
            vault.list()
        yield caught.value
    vault.path.write_bytes(good)
    credentials = resolver(vault, key_file, FakeClock())
    for call in (
        lambda: credentials.resolve_for(openai(), "gone"),
        lambda: credentials.resolve_for(Deployment(name="other", type="openai"), "team-openai"),
        lambda: Vault(vault.path, MasterKey.from_text(generate_master_key(), "x")).list(),
        lambda: MasterKey.from_text(PLAIN_CANARY, "$K"),
        lambda: vault.add("team-openai", CANARY),
        lambda: vault.add(CANARY, CANARY),
        lambda: vault.add("x", f"{CANARY}\n{PLAIN_CANARY}"),
    ):
        with pytest.raises(GTLError) as caught:
            call()
        yield caught.value


def test_canaries_never_leak(vault: Vault, key_file: Path, master_text: str, caplog: pytest.LogCaptureFixture):
    caplog.set_level(logging.DEBUG, logger="gtl_nb")
    filled(vault)
    seen: list[str] = [vault.path.read_bytes().decode("latin-1")]
    credentials = resolver(vault, key_file, FakeClock())
    resolved = credentials.resolve(openai())
    assert resolved.api_key == CANARY  # the one place the secret goes: the deployment sent upstream
    assert credentials.resolve_for(openai(), "shared").api_key == PLAIN_CANARY  # the log filter does not know it
    snapshot = vault.snapshot()
    seen += [repr(x) for x in (vault, vault.master, snapshot, *snapshot.entries.values(), credentials, resolved)]
    seen += [str(x) for x in vault.list()]
    vault.rotate_master(MasterKey.from_text(generate_master_key(), "new"))
    seen.append(vault.path.read_bytes().decode("latin-1"))
    vault.rotate_master(MasterKey.from_text(master_text, "back"))
    for error in _failures(vault, key_file, master_text):
        seen += [str(error), repr(error), error.message]
        if error.__cause__ is not None or error.__context__ is not None:
            seen.append(repr(error.__cause__ or error.__context__))
    for record in caplog.records:
        seen += [record.getMessage(), str(record.msg), repr(record.args)]
    assert len(caplog.records) >= 3  # the test saw the log lines it claims to check
    for text in seen:
        for canary in (CANARY, PLAIN_CANARY, master_text, master_text.rstrip("=")):
            assert canary not in text, text


def test_a_reload_that_adds_a_deployment_gives_it_the_new_files_key(vault: Vault, key_file: Path, tmp_path: Path):
    """With a vault, a reload rebinds the open vault to the new file's own credentials: the vault's
    deployment keeps its stored key, and one the reload adds gets the key its table names."""
    from gtl_nb.gateway.auth import build_credentials
    from gtl_nb.gateway.reload import Reloader, SwappableAuthenticator
    from gtl_nb.gateway.settings import GatewaySettings

    filled(vault)
    config = tmp_path / "gtl.toml"
    vault_table = (
        f'[gateway.vault]\npath = "{vault.path}"\nmaster_key_file = "{key_file}"\n'
        '[gateway.vault.keys]\nopenai = "team-openai"\n'
    )
    openai_table = '[providers.openai]\nbase_url = "https://api.example"\napi_key_env = "GTL_TEST_UNSET"\n'
    config.write_text(openai_table + vault_table)
    settings = load_settings(config=config, environ={})
    credentials = build_credentials(settings, GatewaySettings.from_settings(settings))
    engine = build_engine(settings, ledger=False, credentials=credentials)
    reloader = Reloader(engine, config=config, settings=settings, authenticate=SwappableAuthenticator(lambda _: None))
    added = '[providers.later]\ntype = "anthropic"\napi_key = "key-from-the-reloaded-file"\n'
    config.write_text(openai_table + added + vault_table)
    try:
        assert "+later" in reloader.reload()
        assert engine.credentials.resolve(engine.deployments["later"]).api_key == "key-from-the-reloaded-file"
        assert engine.credentials.resolve(engine.deployments["openai"]).api_key == CANARY
        config.write_text(vault_table)  # the key table names a deployment this file drops: refused, nothing changes
        with pytest.raises(ConfigurationError, match="keys names deployment 'openai'"):
            reloader.reload()
        assert "later" in engine.deployments
    finally:
        asyncio.run(engine.aclose())


@pytest.mark.parametrize("broken", ["a key removed from the vault", "a key variable that is unset"])
def test_a_gateways_deployment_it_cannot_call_is_its_operators_to_fix_and_another_serves(
    broken: str, vault: Vault, key_file: Path, caplog: pytest.LogCaptureFixture
):
    """Nothing the caller can mend: not a 400 naming the vault's file, nor a call upstream with no key.
    The operator reads it in the log (once), the caller's request fails over to a deployment that works."""
    from gtl_nb.engine.context import RequestContext
    from gtl_nb.protocol.messages import Error, Status

    secret = "sim-vault-key-0123456789abcdef"
    server = sim.serve("openai", seed=3, api_key=secret)
    unset = {"type": "openai", "base_url": server.base_url, "api_key_env": "GTL_TEST_UNSET", "models": ["gpt-4o-mini"]}
    working = {"type": "openai", "base_url": server.base_url, "api_key": secret, "models": ["gpt-4o-mini"]}
    try:
        settings = load_settings(
            providers={"first": unset, "second": working},
            routing={"strategy": "failover", "retry": {"max_attempts": 3, "base_delay": 5, "max_delay": 5}},
            environ={},
        )
        if broken.startswith("a key removed"):
            vault.add("team-first", secret, "first")
            credentials = resolver(vault, key_file, FakeClock(), keys={"first": "team-first"})
            vault.remove("team-first")
            credentials.refresh()
        else:
            credentials = None
        problems = settings.missing_credentials(None if credentials is None else credentials.resolve)
        assert len(problems) == 1 and "'first'" in problems[0]  # what gtl serve and a reload warn of
        engine = build_engine(settings, ledger=False, credentials=credentials, audience=GATEWAY)

        async def session(n: int, context: Any = None) -> list[Any]:
            message = Message(role="user", content="hi")
            request = CompletionRequest(f"s{n}", "first:gpt-4o-mini" if context else "gpt-4o-mini", [message])
            return [e async for e in engine.stream(request, context=context)]

        async def run() -> list[Any]:
            try:
                sessions = [await session(n) for n in range(6)]
                breakers.update(await engine.breaker_states())
                # a token choosing a stored key the gateway cannot give hears it, although the deployment
                # is marked as one this gateway cannot call with its own credentials
                chooser = RequestContext(principal="ann", provider_keys={"first": "gone"})
                chosen.extend(await session(9, chooser))
                return sessions
            finally:
                await engine.aclose()

        breakers: dict[str, Any] = {}
        chosen: list[Any] = []

        with caplog.at_level(logging.ERROR, logger="gtl_nb"):
            sessions = asyncio.run(run())
    finally:
        server.close()
    for events in sessions:
        assert isinstance(events[-1], Done) and events[-1].provider == "second", events
        failover = next(e for e in events if isinstance(e, Status) and e.state == "failover")
        assert failover.from_provider == "first" and "PROVIDER_UNAVAILABLE" in failover.reason
        assert "operator" in failover.reason and "vault" not in failover.reason and "GTL_TEST" not in failover.reason
        assert not any(isinstance(e, Error) for e in events)
        assert not any(isinstance(e, Status) and e.state == "retrying" for e in events)  # no retry mends it
    assert isinstance(chosen[-1], Error) and chosen[-1].code == "AUTH_FAILED", chosen[-1]
    # no verdict on the provider: a breaker replicas share must not open for one replica's set-up
    assert breakers["first"]["state"] == "closed" and not breakers["first"].get("failures"), breakers["first"]
    told = [r.getMessage() for r in caplog.records if "cannot be called" in r.getMessage()]
    assert len(told) == 1, told  # once, not a line a request
    assert ("vault" in told[0]) if credentials is not None else ("GTL_TEST_UNSET" in told[0] or "api_key" in told[0])


@pytest.mark.parametrize("broken", ["a key removed from the vault", "a key variable that is unset"])
def test_a_model_listing_of_a_deployment_the_gateway_cannot_call_tells_the_caller_nothing_of_its_set_up(
    broken: str, vault: Vault, key_file: Path, caplog: pytest.LogCaptureFixture
):
    """The ``models`` query, as a completion (``_uncallable``): a retryable PROVIDER_UNAVAILABLE that names
    neither the vault's file nor the stored key nor the variable, the operator's detail in the log only."""
    from gtl_nb.engine.context import RequestContext
    from gtl_nb.gateway.queries import answer_query
    from gtl_nb.protocol.messages import Query

    secret = "sim-vault-key-0123456789abcdef"
    server = sim.serve("openai", seed=3, api_key=secret)
    unset = {"type": "openai", "base_url": server.base_url, "api_key_env": "GTL_TEST_UNSET", "models": ["gpt-4o-mini"]}
    try:
        settings = load_settings(providers={"first": unset}, environ={})
        credentials = None
        if broken.startswith("a key removed"):
            vault.add("team-first", secret, "first")
            credentials = resolver(vault, key_file, FakeClock(), keys={"first": "team-first"})
            vault.remove("team-first")
            credentials.refresh()
        engine = build_engine(settings, ledger=False, credentials=credentials, audience=GATEWAY)
        context = RequestContext(principal="ann", scopes=frozenset({"models:read"}))
        query = Query(query_id="q", name="models", params={"deployment": "first"})

        async def run() -> list[Any]:
            try:
                return [await answer_query(engine, context, query, max_bytes=1 << 20) for _ in range(2)]
            finally:
                await engine.aclose()

        with caplog.at_level(logging.ERROR, logger="gtl_nb"):
            answers = asyncio.run(run())
    finally:
        server.close()
    for answer in answers:
        error = answer.error
        assert error is not None and error.code == "PROVIDER_UNAVAILABLE" and error.retryable, answer
        assert "operator" in error.message and "'first'" in error.message, error.message
        for detail in ("vault", "team-first", str(vault.path), "GTL_TEST_UNSET", "keys add"):
            assert detail not in error.message, error.message
    told = [r.getMessage() for r in caplog.records if "cannot be called" in r.getMessage()]
    assert len(told) == 1, told
    assert (
        ("team-first" in told[0]) if credentials is not None else ("GTL_TEST_UNSET" in told[0] or "api_key" in told[0])
    )


def test_gtl_keys_add_refuses_a_deployment_the_configuration_does_not_have(
    tmp_path: Path, cli_env: dict[str, str], master_text: str
):
    """As gtl token mint refuses it: a key bound to a misspelt deployment would never be used."""
    cli_env["GTL_NB_VAULT_KEY"] = master_text
    config = tmp_path / "gtl.toml"
    config.write_text('[providers.openai]\ntype = "openai"\napi_key_env = "GTL_TEST_UNSET"\n', encoding="utf-8")
    typo = keys("add", "k", "--deployment", "opneai", "--config", str(config), env=cli_env, stdin="secret-k")
    assert typo.returncode == 2 and typo.stdout == "", typo.stdout
    assert f"no deployment 'opneai' in {config} (its deployments: echo, openai)" in typo.stderr
    assert "did you mean 'openai'? Nothing was stored" in typo.stderr and "secret-k" not in typo.stderr
    assert "'k'" not in keys("list", "--config", str(config), env=cli_env).stdout
    known = keys("add", "k2", "--deployment", "openai", "--config", str(config), env=cli_env, stdin="secret-k2")
    assert known.returncode == 0 and "warning" not in known.stderr
    # a vault named with its master key reads no configuration: it may serve another gateway's deployments
    other = ["--vault", str(tmp_path / "other.json"), "--key-env", "GTL_NB_VAULT_KEY"]
    elsewhere = keys("add", "k3", "--deployment", "theirs", *other, env=cli_env, stdin="secret-k3")
    assert elsewhere.returncode == 0, elsewhere.stderr


def test_gtl_keys_says_which_flag_named_an_unset_variable(tmp_path: Path, cli_env: dict[str, str]):
    listed = keys("list", "--vault", str(tmp_path / "v.json"), "--key-env", "my_key", env=cli_env)
    assert listed.returncode == 2 and "the variable --key-env names is not set" in listed.stderr


def test_gtl_keys_genkey_into_a_folder_that_does_not_exist_says_how_to_make_it(tmp_path: Path, cli_env: dict[str, str]):
    folder = tmp_path / "etc-gtl"
    made = keys("genkey", "--out", str(folder / "vault.key"), env=cli_env)
    assert made.returncode == 2 and "Traceback" not in made.stderr
    assert f"the folder {folder} does not exist; create it first (install -d -m 755 {folder}" in made.stderr
    assert not folder.exists()


def test_gtl_keys_remove_warns_when_the_configuration_still_gives_the_key_to_a_deployment(
    tmp_path: Path, cli_env: dict[str, str], master_text: str
):
    cli_env["GTL_NB_VAULT_KEY"] = master_text
    config = tmp_path / "gtl.toml"
    config.write_text(
        '[providers.openai]\ntype = "openai"\napi_key_env = "GTL_TEST_UNSET"\n\n'
        '[gateway.vault]\npath = "v.json"\nkeys = { openai = "team-openai" }\n',
        encoding="utf-8",
    )
    for name in ("team-openai", "spare"):
        assert keys("add", name, "--config", str(config), env=cli_env, stdin="secret").returncode == 0
    named = keys("remove", "team-openai", "--config", str(config), env=cli_env)
    assert named.returncode == 0 and "removed key 'team-openai'" in named.stdout  # removed at once all the same
    assert "warning: [gateway.vault] keys still gives 'team-openai' to openai" in named.stderr
    assert "warns of it at each start and reload" in named.stderr and "will not start" not in named.stderr
    unnamed = keys("remove", "spare", "--config", str(config), env=cli_env)
    assert unnamed.returncode == 0 and "warning" not in unnamed.stderr
    # another vault than the configuration's: its table is about other keys
    other = ["--vault", str(tmp_path / "other.json"), "--key-env", "GTL_NB_VAULT_KEY", "--config", str(config)]
    assert keys("add", "team-openai", *other, env=cli_env, stdin="secret").returncode == 0
    elsewhere = keys("remove", "team-openai", *other, env=cli_env)
    assert elsewhere.returncode == 0 and "warning" not in elsewhere.stderr
