"""``gtl keys``: the gateway's provider-key vault from the command line (docs/vault.md).

    gtl keys add NAME [--deployment D] [--replace]    the secret from standard input, or a hidden prompt
    gtl keys list [--json]                            names and metadata, never a secret
    gtl keys remove NAME
    gtl keys rotate --new-key-file FILE | --new-key-env VAR
    gtl keys genkey [--out FILE]                      a new master key

Every action but ``genkey`` finds the vault with ``--vault FILE`` and its master key with
``--key-file FILE`` or ``--key-env VAR``; what is not given comes from ``[gateway.vault]`` of the
configuration (``--config FILE``, as ``gtl --config``), then the defaults (``vault.json`` in the
user data directory, ``$GTL_NB_VAULT_KEY``). A secret is never taken from the command line, where
other users see it in the process list and the shell keeps it in its history.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import getpass
import json
import os
import shlex
import sys
from pathlib import Path
from typing import Any

from gtl_nb.protocol.errors import ConfigurationError
from gtl_nb.words import install_extra

__all__ = ["add_subcommands"]


def add_subcommands(subparsers: Any) -> None:
    """Register ``keys`` on the ``gtl`` command's subparsers (handlers in ``handler``)."""
    keys = subparsers.add_parser(
        "keys",
        help="manage the gateway's encrypted provider keys (add, list, remove, rotate, genkey)",
        description="Manage the gateway's vault of provider keys, encrypted with a master key.",
    )
    actions = keys.add_subparsers(dest="keys_action", metavar="ACTION", required=True)

    vault = argparse.ArgumentParser(add_help=False)
    vault.add_argument(
        "--vault", metavar="FILE", help="the vault file (default: [gateway.vault] path, then vault.json)"
    )
    master = vault.add_mutually_exclusive_group()
    master.add_argument("--key-file", metavar="FILE", help="file holding the master key (mode 0600)")
    master.add_argument("--key-env", metavar="VAR", help="environment variable holding the master key")
    # its own name: a subcommand's default would overwrite the global --config given before it
    vault.add_argument("--config", dest="keys_config", metavar="FILE", help="TOML configuration file (as gtl --config)")

    add = actions.add_parser(
        "add",
        parents=[vault],
        help="store a provider key (the secret is read from standard input or a hidden prompt)",
        description="Store a provider key. The secret is read from standard input, or asked for without echo.",
    )
    add.add_argument("name", help="the key's name, e.g. team-openai")
    add.add_argument("--deployment", metavar="D", help="allow only this deployment to use the key")
    add.add_argument("--replace", action="store_true", help="replace the secret of an existing key")
    add.set_defaults(handler=_add)

    listing = actions.add_parser("list", parents=[vault], help="list stored keys (never their secrets)")
    listing.add_argument("--json", action="store_true", help="one JSON object per key")
    listing.set_defaults(handler=_list)

    remove = actions.add_parser("remove", parents=[vault], help="remove a stored key (revokes it)")
    remove.add_argument("name", help="the key's name")
    remove.set_defaults(handler=_remove)

    rotate = actions.add_parser(
        "rotate",
        parents=[vault],
        help="encrypt every key again under a new master key",
        description="Encrypt every stored key again under a new master key (the current one opens the vault).",
    )
    new = rotate.add_mutually_exclusive_group(required=True)
    new.add_argument("--new-key-file", metavar="FILE", help="file holding the new master key (mode 0600)")
    new.add_argument("--new-key-env", metavar="VAR", help="environment variable holding the new master key")
    rotate.set_defaults(handler=_rotate)

    genkey = actions.add_parser("genkey", help="print a new random master key")
    genkey.add_argument("--out", metavar="FILE", help="write it to a new file readable only by you instead")
    genkey.set_defaults(handler=_genkey)


# ----------------------------------------------------------------------------------------------
# Actions


def _add(args: argparse.Namespace) -> int:
    from gtl_nb.gateway.tokens import looks_like_a_key

    # (an argument this command does not take — a secret after the name — gtl refuses unprinted: cli.main)
    if args.deployment and looks_like_a_key(args.deployment):
        raise ConfigurationError(
            "gtl keys add takes the key's name only: a secret on the command line stays in the shell's history "
            'and the process list. Pipe it on standard input (printf %s "$KEY" | gtl keys add NAME) or type it '
            "at the hidden prompt; nothing was stored"
        )
    vault_module = _vault_module()
    vault_module.check_key_name(args.name)  # before asking for the secret
    vault = _open(args)
    configured = getattr(args, "configured_deployments", None)
    if args.deployment and configured is not None and args.deployment not in configured:
        # refused, as gtl token mint refuses it: a key bound to a misspelt deployment is never used, and
        # the deployment meant goes on without it. A vault serving a gateway of another file is reached
        # with that file (--config), or with --vault and --key-file, which read no deployments
        close = difflib.get_close_matches(args.deployment, sorted(configured), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else "."
        raise ConfigurationError(
            f"no deployment {args.deployment!r} in {getattr(args, 'configured_in', 'the configuration')} (its "
            f"deployments: {', '.join(sorted(configured))}): a key bound to it would never be used{hint} Nothing "
            "was stored (for a gateway of another configuration, give its file with --config)"
        )
    info = vault.add(args.name, _read_secret(args.name), args.deployment, replace=args.replace)
    scope = f" for deployment {info.deployment}" if info.deployment else ""
    verb = "replaced the secret of" if info.rotated else "added"
    print(f"{verb} key {info.name!r}{scope} (fingerprint {info.fingerprint}) in {vault.path}")
    return 0


def _list(args: argparse.Namespace) -> int:
    vault = _open(args)
    path = Path(vault.path)
    if not path.exists() and not path.is_symlink():  # a mistyped --vault or path is no empty vault
        raise ConfigurationError(
            f"no vault file at {path}: check --vault (or [gateway.vault] path; a relative one is read from the "
            "configuration file's folder). gtl keys add makes a new vault"
        )
    infos = vault.list()
    if args.json:
        for info in infos:
            print(json.dumps(dataclasses.asdict(info)))
        return 0
    if not infos:
        print(f"no keys in {vault.path}")
        return 0
    rows = [("NAME", "DEPLOYMENT", "FINGERPRINT", "CREATED", "ROTATED")]
    rows += [(i.name, i.deployment or "(any)", i.fingerprint, i.created, i.rotated or "-") for i in infos]
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())
    return 0


def _remove(args: argparse.Namespace) -> int:
    vault = _open(args)
    info = vault.remove(args.name)
    print(f"removed key {info.name!r} (fingerprint {info.fingerprint}) from {vault.path}")
    _warn_of_tables_naming(args, Path(vault.path), info.name)
    return 0


def _warn_of_tables_naming(args: argparse.Namespace, vault_path: Path, name: str) -> None:
    """Say which deployments the configuration's ``[gateway.vault] keys`` still gives the removed key.

    Removing stays immediate (it is how a leaked key is revoked), but a table still naming the key
    means those deployments fail over or fail until it changes (the gateway warns of it at start
    and on each reload, and serves its other deployments).
    Only the table of the configuration whose vault this is counts.
    """
    from gtl_nb.gateway.vault_credentials import VaultSettings

    try:
        config = _configuration(args)
        table = dict(config.gateway.get("vault") or {})
        base = config.source_path.parent if config.source_path is not None else Path.cwd()
        settings = VaultSettings.from_table(table, base=base)
    except ConfigurationError:
        return  # no readable configuration (the vault was named on the command line): nothing to warn of
    if settings.path.resolve() != vault_path.resolve():
        return
    deployments = sorted(deployment for deployment, key in settings.keys.items() if key == name)
    if deployments:
        print(
            f"gtl keys: warning: [gateway.vault] keys still gives {name!r} to {', '.join(deployments)}: a running "
            "gateway's requests there fail over to another deployment or end PROVIDER_UNAVAILABLE (the gateway "
            "warns of it at each start and reload) until you add the key again or change that table",
            file=sys.stderr,
        )


def _rotate(args: argparse.Namespace) -> int:
    vault_module = _vault_module()
    vault = _open(args)
    if args.new_key_file:
        source = vault_module.MasterKeySource(file=Path(args.new_key_file).expanduser())
    else:
        source = vault_module.MasterKeySource(env=args.new_key_env, named_by="--new-key-env")
    new_key = source.load()
    count = vault.rotate_master(new_key)
    print(f"encrypted {count} key(s) in {vault.path} again under {source.describe()} (key id {new_key.key_id})")
    print(
        "now give the gateway the new key: a gateway reading its key from a file takes it up when that file "
        "changes; one reading an environment variable needs a restart with the new value",
        file=sys.stderr,
    )
    return 0


def _genkey(args: argparse.Namespace) -> int:
    vault_module = _vault_module()
    key = vault_module.generate_master_key()
    if args.out is None:
        print(key)
        if sys.stdout.isatty():
            print(
                "keep it secret: in a file only the gateway's user can read (chmod 600), or a secret store",
                file=sys.stderr,
            )
        return 0
    path = Path(args.out).expanduser()
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise ConfigurationError(
            f"{path} exists already; give a new file name (a master key is never overwritten)"
        ) from None
    except FileNotFoundError:
        # not made here: a folder's owner and mode are the operator's choice (the gateway's user must
        # be able to reach the key, others need not see the folder's other files), and a typo in
        # --out must not leave folders behind
        raise ConfigurationError(
            f"cannot create {path}: the folder {path.parent} does not exist; create it first "
            f"(install -d -m 755 {shlex.quote(str(path.parent))}: the key file itself is made readable by "
            "you only), then run gtl keys genkey again"
        ) from None
    except OSError as exc:
        raise ConfigurationError(f"cannot create {path} ({exc.strerror or exc})") from None
    with os.fdopen(fd, "w", encoding="ascii") as handle:
        handle.write(key + "\n")
    print(f"wrote a new master key to {path} (key id {vault_module.MasterKey.from_text(key, str(path)).key_id})")
    return 0


# ----------------------------------------------------------------------------------------------
# Helpers


def _vault_module() -> Any:
    """``gtl_nb.gateway.vault``, or the install command when ``cryptography`` is missing."""
    try:
        from gtl_nb.gateway import vault
    except ImportError as exc:
        if (exc.name or "").partition(".")[0] != "cryptography":
            raise
        raise ConfigurationError(f"gtl keys needs the cryptography package: {install_extra('gateway')}") from None
    return vault


def _open(args: argparse.Namespace) -> Any:
    """The vault the options (then ``[gateway.vault]``, then the defaults) name, opened with its master key."""
    vault_module = _vault_module()
    from gtl_nb.gateway.vault_credentials import VaultSettings

    table: dict[str, Any] = {}
    base = Path.cwd()
    if args.vault is None or (args.key_file is None and args.key_env is None):
        config = _configuration(args)
        table = dict(config.gateway.get("vault") or {})
        if set(config.deployments) - set(config.implied):  # (a file that sets up none is not asked)
            args.configured_deployments = set(config.deployments)
            args.configured_in = config.source_path or "the configuration"
        if config.source_path is not None:
            base = config.source_path.parent
    settings = VaultSettings.from_table(table, base=base)
    path = Path(args.vault).expanduser() if args.vault else settings.path
    master = settings.master
    if args.key_file:
        master = vault_module.MasterKeySource(file=Path(args.key_file).expanduser())
    elif args.key_env:
        master = vault_module.MasterKeySource(env=args.key_env, named_by="--key-env")
    return vault_module.Vault(path, master.load())


def _configuration(args: argparse.Namespace) -> Any:
    """The configuration ``--config`` names (either place it may be given), else the default one."""
    from gtl_nb.engine.config import load_config

    config_file = args.keys_config or getattr(args, "config", None)
    if config_file is not None and not Path(config_file).expanduser().is_file():
        raise ConfigurationError(f"--config {config_file}: no such file")
    return load_config(config=config_file)


def _read_secret(name: str) -> str:
    """The secret from a hidden prompt on a terminal, else all of standard input (one line, usually)."""
    from gtl_nb.gateway.vault import MAX_SECRET_CHARS

    stdin = sys.stdin
    if stdin is None:
        raise ConfigurationError("no standard input to read the secret from")
    if stdin.isatty():
        return getpass.getpass(f"secret for {name} (not shown): ")
    text = stdin.read(MAX_SECRET_CHARS + 2)
    if not text.strip():
        raise ConfigurationError(f"no secret for key {name!r} on standard input")
    return text
