"""``gtl token``: development GhostTokens (``cli._optional_subcommands`` registers it).

    gtl token mint --sub NAME --scope chat:write [--scope ...] --ttl 8h [--provider-key DEPLOYMENT=KEY_NAME ...]
                   [--model M ...] [--deployment D ...] [--tenant T]
    gtl token list [--json]
    gtl token revoke JTI [--minted-elsewhere]
    gtl token push-revocations [--from STORE]

Every command reads ``[gateway.jwt]`` of the configuration (``--config`` — before ``token``, after it or
after the action — then ``$GTL_NB_CONFIG``, then the user's file): ``mint`` signs with its HS256 secret
and prints the token on standard output and nothing else; the token store (``revocations``) records
what was minted — never the token — and holds the revocations the gateway checks.
"""

from __future__ import annotations

import argparse
import datetime
import difflib
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from gtl_nb.protocol.errors import ConfigurationError
from gtl_nb.words import install_extra

__all__ = ["add_subcommands", "parse_duration"]

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_duration(text: str) -> float:
    """Seconds in ``"90s"``, ``"30m"``, ``"8h"``, ``"2d"`` or ``"1w"``; ``ConfigurationError`` otherwise —
    a number without its unit too (``--ttl 8`` meant hours as often as seconds)."""
    spoken = text.strip().lower()
    number, unit = (spoken[:-1], spoken[-1]) if spoken[-1:] in _UNITS else (spoken, "")
    try:
        value = float(number)
    except ValueError:
        value = -1.0
    if not (value > 0 and value != float("inf")):
        raise ConfigurationError(f"--ttl {text!r}: give a duration such as 90s, 30m, 8h, 2d or 1w")
    if not unit:
        raise ConfigurationError(
            f"--ttl {text!r}: give its unit: {number}s, {number}m, {number}h, {number}d or {number}w"
        )
    return value * _UNITS[unit]


def add_subcommands(subparsers: Any) -> None:
    """Register ``token`` (with ``mint``, ``list``, ``revoke``) on the ``gtl`` command's subparsers."""
    parser = subparsers.add_parser(
        "token",
        help="mint, list and revoke development GhostTokens",
        description="Development GhostTokens, signed with [gateway.jwt]'s HS256 secret (docs/tokens.md).",
    )
    # its own name: a subcommand's default would overwrite the global --config given before it
    parser.add_argument("--config", dest="token_config", metavar="FILE", help="TOML configuration (as gtl --config)")
    actions = parser.add_subparsers(dest="token_command", metavar="ACTION")
    # after the action too (gtl token mint --config FILE): not typed there, the one before it stands
    after = argparse.ArgumentParser(add_help=False)
    after.add_argument(
        "--config",
        dest="token_config",
        metavar="FILE",
        default=argparse.SUPPRESS,
        help="TOML configuration (as gtl --config)",
    )

    mint = actions.add_parser("mint", parents=[after], help="print a new token on standard output")
    mint.add_argument("--sub", required=True, help="the principal the token stands for")
    mint.add_argument(
        "--scope", action="append", default=[], help="a scope to grant: at least one (repeat; docs/tokens.md)"
    )
    mint.add_argument("--ttl", default="8h", help="lifetime: 90s, 30m, 8h, 2d, 1w (default 8h)")
    mint.add_argument(
        "--provider-key",
        action="append",
        default=[],
        metavar="DEPLOYMENT=KEY_NAME",
        help="the stored provider key a deployment's requests use (repeat); limits the token to these deployments",
    )
    mint.add_argument("--model", action="append", help="a model the token may use (repeat; a trailing * is a prefix)")
    mint.add_argument(
        "--deployment",
        action="append",
        help="limit the token to this deployment (repeat); it narrows the --provider-key deployments (or the "
        "policy's default_deployments), never adds to them",
    )
    mint.add_argument("--tenant", help="the organisation the principal belongs to")
    mint.set_defaults(handler=_mint)

    listing = actions.add_parser("list", parents=[after], help="the tokens minted here and whether each is revoked")
    listing.add_argument("--json", action="store_true", help="one JSON object per token")
    listing.set_defaults(handler=_list)

    revoke = actions.add_parser(
        "revoke", parents=[after], help="deny a token by its jti (the gateway sees it within seconds)"
    )
    revoke.add_argument("jti", help="the token's id (gtl token list shows it)")
    revoke.add_argument(
        "--minted-elsewhere",
        action="store_true",
        help="revoke the id as typed even though a token minted here has an id close to it",
    )
    revoke.set_defaults(handler=_revoke)

    push = actions.add_parser(
        "push-revocations",
        parents=[after],
        help="copy a token store's revocations into the shared list (moving revocations to Redis)",
        description="Copy every unexpired revocation of a SQLite token store into the shared revocation list "
        "that [gateway.jwt] revocations names (a redis:// URL). Run it when revocations move from a gateway's "
        "token store to Redis: the replicas never read the store the single gateway used (docs/deploy.md).",
    )
    push.add_argument(
        "--from",
        dest="source",
        metavar="STORE",
        help="the token store to copy (the old gateway's tokens.sqlite3); default: this machine's, the one "
        "gtl token revoke writes here",
    )
    push.set_defaults(handler=_push_revocations)

    parser.set_defaults(handler=lambda args: _usage(parser))


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help(sys.stderr)
    return 2


def _configuration(args: argparse.Namespace) -> Any:
    """The configuration ``--config`` names (or the default one)."""
    from gtl_nb.engine.config import load_config

    path = getattr(args, "token_config", None) or getattr(args, "config", None)
    if path is not None and not Path(path).expanduser().is_file():
        raise ConfigurationError(f"--config {path}: no such file")
    return load_config(config=path)


def _policy(args: argparse.Namespace, config: Any = None) -> Any:
    """The ``TokenPolicy`` of the configuration's ``[gateway.jwt]`` (``config``, else read here)."""
    try:
        from gtl_nb.gateway.tokens import TokenPolicy
    except ImportError:
        raise ConfigurationError(f"gtl token needs the gateway extra: {install_extra('gateway')}") from None
    return TokenPolicy.from_table(*_jwt_table(args, config), os.environ)


def _revocation_settings(args: argparse.Namespace) -> Any:
    """What ``list`` and ``revoke`` need of ``[gateway.jwt]``: the stores, never a key (``RevocationSettings``)."""
    try:
        from gtl_nb.gateway.tokens.policy import RevocationSettings
    except ImportError:
        raise ConfigurationError(f"gtl token needs the gateway extra: {install_extra('gateway')}") from None
    return RevocationSettings.from_table(*_jwt_table(args))


def _jwt_table(args: argparse.Namespace, config: Any = None) -> tuple[Any, Path]:
    """The configuration's ``[gateway.jwt]`` table and the folder its relative paths start from."""
    config = config if config is not None else _configuration(args)
    table = config.gateway.get("jwt")
    if not table:
        read = (
            f"{config.source_path} has none"
            if config.source_path is not None
            else "no configuration file was found: name the gateway's with --config"
        )
        raise ConfigurationError(f"gtl token needs a [gateway.jwt] table in the configuration; {read} (docs/tokens.md)")
    return table, config.source_path.parent if config.source_path is not None else Path.cwd()


def _store(policy: Any) -> Any:
    from gtl_nb.gateway.tokens import SqliteTokenStore

    return SqliteTokenStore(policy.store_path, refresh=policy.refresh)


def _pairs(values: list[str]) -> dict[str, str]:
    from gtl_nb.gateway.tokens import looks_like_a_key

    pairs: dict[str, str] = {}
    for value in values:
        deployment, sep, key_name = value.partition("=")
        if not sep or not deployment.strip() or not key_name.strip():
            raise ConfigurationError("--provider-key takes DEPLOYMENT=KEY_NAME, e.g. openai=team-key")
        if looks_like_a_key(key_name):  # never echoed: it may be the key itself
            raise ConfigurationError(
                f"--provider-key {deployment.strip()}=…: that looks like a key itself; give the name the gateway "
                "stores the key under, never the key"
            )
        pairs[deployment.strip()] = key_name.strip()
    return pairs


def _mint(args: argparse.Namespace) -> int:
    try:
        from gtl_nb.gateway.tokens import mint_token
    except ImportError as exc:
        from gtl_nb.gateway.auth import missing_extra

        raise missing_extra(exc, "gtl token mint") from None

    lifetime = parse_duration(args.ttl)
    provider_keys = _pairs(args.provider_key) if args.provider_key else None
    if not args.scope:
        raise ConfigurationError("give at least one --scope (e.g. --scope chat:write --scope models:read)")
    config = _configuration(args)
    policy = _policy(args, config)
    _refuse_unknown_deployments(config, [*(provider_keys or ()), *(args.deployment or ())])
    if provider_keys:
        _warn_of_unknown_keys(config, provider_keys)
    elif "chat:write" in args.scope and policy.default_deployments == frozenset():
        print(
            "gtl token: warning: this token may call no deployment — it carries no --provider-key and "
            "[gateway.jwt] default_deployments is empty — so every completion it asks for is refused; give "
            "--provider-key DEPLOYMENT=KEY_NAME, or list deployments in default_deployments (docs/tokens.md)",
            file=sys.stderr,
        )
    with _store(policy) as store:
        token = mint_token(
            policy,
            subject=args.sub,
            scopes=args.scope,
            lifetime=lifetime,
            provider_keys=provider_keys,
            allowed_models=args.model,
            allowed_deployments=args.deployment,
            tenant=args.tenant,
            registry=store,
        )
    sys.stdout.write(token + "\n")
    return 0


def _refuse_unknown_deployments(config: Any, named: list[str]) -> None:
    """Refuse a ``--deployment`` or ``--provider-key`` deployment the configuration does not have: the
    token would be refused for it every time (a typo minted a useless token without a word). Only a
    configuration that sets up deployments of its own is asked — a token is sometimes minted with a
    file that holds little more than ``[gateway.jwt]``."""
    from difflib import get_close_matches

    known = set(config.deployments)
    if not known - set(config.implied):
        return
    for name in dict.fromkeys(named):
        if name not in known:
            close = get_close_matches(name, sorted(known), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            where = config.source_path or "the configuration"
            raise ConfigurationError(
                f"no deployment {name!r} in {where} (its deployments: {', '.join(sorted(known))}): a token for it "
                f"would be refused every time{hint}"
            )


def _warn_of_unknown_keys(config: Any, provider_keys: dict[str, str]) -> None:
    """Warn (on standard error) of a ``--provider-key`` the configuration's vault does not hold, or holds
    for another deployment: the token would be refused each time it is used. Only when that vault can
    be opened here (its master key at hand); a token is often minted where the vault is not."""
    try:
        from gtl_nb.gateway.vault import Vault
        from gtl_nb.gateway.vault_credentials import VaultSettings

        table = config.gateway.get("vault")
        if table is None:  # a gateway of this configuration has no vault: it refuses every chosen key
            print(
                "gtl token: warning: --provider-key names stored keys, but this configuration has no "
                "[gateway.vault]: its gateway refuses the token for those deployments (docs/vault.md)",
                file=sys.stderr,
            )
            return
        base = config.source_path.parent if config.source_path is not None else Path.cwd()
        settings = VaultSettings.from_table(table, base=base)
        if not settings.path.is_file():
            return
        stored = {info.name: info.deployment for info in Vault(settings.path, settings.master.load()).list()}
    except Exception:  # (no master key here, no cryptography, an unreadable vault): the gateway checks
        return
    for deployment, name in sorted(provider_keys.items()):
        if name not in stored:
            why = f"the vault {settings.path} holds no key {name!r}"
        elif stored[name] not in (None, deployment):
            why = f"key {name!r} in {settings.path} is for deployment {stored[name]!r}"
        else:
            continue
        print(
            f"gtl token: warning: --provider-key {deployment}={name}: {why}; the gateway refuses the token for "
            f"{deployment} until {name!r} is a key of {deployment!r} in its vault (gtl keys list shows them)",
            file=sys.stderr,
        )


def _list(args: argparse.Namespace) -> int:
    policy = _revocation_settings(args)
    now = time.time()
    with _store(policy) as store:
        store.prune(now - policy.leeway)
        tokens, revoked = store.minted(), set(store.revoked())
    shared = _shared_revocations(policy)
    rows = [
        {
            "jti": token.jti,
            "subject": token.subject,
            "scopes": list(token.scopes),
            "tenant": token.tenant,
            "expires": _when(token.expires_at),
            "state": _state(token, revoked, shared, now),
        }
        for token in tokens
    ]
    unshared = [row["jti"] for row in rows if row["state"] == UNSHARED]
    for jti in unshared:
        print(
            f"gtl token: {jti} is revoked here but not in the shared list the gateways read: they still accept "
            f"it; run gtl token revoke {jti} again",
            file=sys.stderr,
        )
    if args.json:
        for row in rows:
            print(json.dumps(row))
        return 0
    if not rows:
        print("no tokens minted here (gtl token mint makes one)")
        return 0
    # columns as wide as their widest value: ids are 32 characters, subjects what the operator chose
    jti_width = max(3, *(len(row["jti"]) for row in rows))
    subject_width = max(7, *(len(row["subject"]) for row in rows))
    state_width = max(5, *(len(row["state"]) for row in rows))
    print(f"{'JTI':<{jti_width}}  {'SUBJECT':<{subject_width}}  {'STATE':<{state_width}}  {'EXPIRES (UTC)':<17} SCOPES")
    for row in rows:
        print(
            f"{row['jti']:<{jti_width}}  {row['subject']:<{subject_width}}  {row['state']:<{state_width}}  "
            f"{row['expires']:<17} {' '.join(row['scopes'])}"
        )
    return 0


UNSHARED = "revoked here only"
"""A token's state when this machine recorded its revocation but the shared list never got it."""


def _state(token: Any, revoked: set[str], shared: set[str] | None, now: float) -> str:
    """What the gateways do with ``token``: the shared list decides when there is one (``shared``)."""
    if shared is not None and token.jti in shared:
        return "revoked"
    if token.jti in revoked:
        return UNSHARED if shared is not None else "revoked"
    return "expired" if token.expires_at <= now else "active"


def _shared_revocations(policy: Any) -> set[str] | None:
    """The ids in the replicas' shared list (``revocations`` is a Redis URL), ``None`` without one.

    When it cannot be read, the states come from this machine's record alone, and a line says so."""
    if policy.revocations_url is None:
        return None
    from gtl_nb.gateway.auth import revocation_list
    from gtl_nb.gateway.tokens.redis_revocations import RevocationStoreError

    try:
        with revocation_list(policy) as shared:
            return set(shared.revoked())
    except RevocationStoreError as exc:
        print(
            f"gtl token: cannot read the shared revocation list ({exc.message}); the states below are this "
            "machine's record: a token it shows revoked may still be accepted by the gateways",
            file=sys.stderr,
        )
        return None


def _revoke(args: argparse.Namespace) -> int:
    jti = args.jti.strip()
    if not jti or len(jti) > 256 or not jti.isprintable():
        raise ConfigurationError("give the token's jti, as gtl token list shows it")
    policy = _revocation_settings(args)
    now = time.time()
    with _store(policy) as store:
        expires = store.expiry_of(jti)
        if expires is None and not args.minted_elsewhere:
            _refuse_a_likely_typo(jti, [token.jti for token in store.minted()])
        # a token minted elsewhere expires at the latest max_lifetime after it was issued, and it
        # cannot have been issued later than now (plus leeway): keep the entry that long
        until = (expires if expires is not None else now + policy.max_lifetime + policy.leeway) + policy.leeway
        if until <= now:  # minted here and expired (its record is kept a week): every gateway refuses it already
            print(f"{jti} expired at {_when(until - policy.leeway)} UTC: the gateways refuse it; nothing to revoke")
            return 0
        already = store.is_revoked(jti)
        store.revoke(jti, until)  # again all the same: the shared list may have missed the first time
    if policy.revocations_url is not None and not _revoke_shared(policy, jti, until):
        return 1
    origin = "" if expires is not None else " (not minted here: kept for [gateway.jwt] max_lifetime)"
    if not already:
        done = f"revoked {jti}"
    elif policy.revocations_url is not None:  # (a first revoke may have reached this machine's store only)
        done = f"{jti} was already revoked here; the shared revocation list has it now too, and it stays revoked"
    else:
        done = f"{jti} was already revoked; it stays revoked"
    # the file named: a gateway reads the store of its own data directory, which need not be this one
    where = f" in the token store {policy.store_path}" if policy.revocations_url is None else ""
    print(f"{done} until {_when(until)} UTC{origin}{where}")
    return 0


def _revoke_shared(policy: Any, jti: str, until: float) -> bool:
    """Revoke ``jti`` in the replicas' shared list too (after this machine's store took it); when the
    list cannot be written, say so on one line — which store (its URL without the password) and why,
    that this machine's store has the revocation and the gateways do not — and return ``False``."""
    from gtl_nb.engine.stores.redis_fallback import one_line
    from gtl_nb.gateway.auth import revocation_list
    from gtl_nb.gateway.tokens.redis_revocations import RevocationStoreError

    try:
        with revocation_list(policy) as shared:
            shared.revoke(jti, until)
    except RevocationStoreError as exc:  # the store's trouble, not a bug: no INTERNAL, exit status 1
        print(
            f"gtl: error: the shared revocation list cannot be written: {one_line(exc.message)}. {jti} is revoked "
            f"in this machine's token store ({policy.store_path}) only: the gateways still accept it; run gtl "
            f"token revoke {jti} again once the shared list can be written",
            file=sys.stderr,
        )
        return False
    return True


def _push_revocations(args: argparse.Namespace) -> int:
    """Copy a SQLite token store's unexpired revocations into the shared list (``push-revocations``).

    A replica writes back only its own token store's revocations (the file in its data directory), so
    those recorded in the single gateway's store before ``revocations`` named Redis reach the replicas
    only through this command. Writing a revocation again changes nothing: it may be run twice."""
    policy = _revocation_settings(args)
    if policy.revocations_url is None:
        raise ConfigurationError(
            "gtl token push-revocations copies revocations into a shared list, and [gateway.jwt] revocations "
            "names no redis:// URL in this configuration: give --config the replicas' configuration"
        )
    from gtl_nb.engine.stores.urls import refuse_url_for_path

    refuse_url_for_path(args.source, "--from", "the old gateway's token store, a SQLite file")
    source = Path(args.source).expanduser() if args.source else Path(policy.store_path)
    if not source.is_file():
        raise ConfigurationError(
            f"no token store at {source}: name the file the old gateway used with --from (its data directory's "
            "gtl_nb/tokens.sqlite3, or its [gateway.jwt] revocations file); nothing was pushed"
        )
    from gtl_nb.engine.stores.redis_fallback import one_line
    from gtl_nb.gateway.auth import revocation_list
    from gtl_nb.gateway.tokens.redis_revocations import RevocationStoreError
    from gtl_nb.gateway.tokens.store import stored_revocations

    now = time.time()
    try:  # read-only: the file named is never written (a ledger named by mistake stays as it was)
        stored = stored_revocations(source)
    except ConfigurationError as exc:
        raise ConfigurationError(
            f"{exc.message}; name the file the old gateway used with --from (its data directory's "
            "gtl_nb/tokens.sqlite3, or its [gateway.jwt] revocations file); nothing was pushed"
        ) from None
    entries = {jti: until for jti, until in stored.items() if until > now}
    try:
        with revocation_list(policy) as shared:
            shared.revoke_many(entries)  # in batches: a bounded number of round trips
            held = len(shared.revoked())
    except RevocationStoreError as exc:
        print(
            f"gtl: error: the shared revocation list cannot be written: {one_line(exc.message)}. The revocations "
            f"of {source} may not all be in it: the gateways may still accept those tokens; run gtl token "
            "push-revocations again once it can be written",
            file=sys.stderr,
        )
        return 1
    print(
        f"pushed {len(entries)} unexpired revocation(s) from {source} to the shared list at {shared.shown} "
        f"(it holds {held} now)"
    )
    return 0


def _refuse_a_likely_typo(jti: str, minted: list[str]) -> None:
    """Refuse to revoke an id no token here has when one minted here is close to it.

    Revoking a mistyped id would report success while the token meant stays valid: the worst
    outcome during an incident. An id minted by another system is still revocable with
    ``--minted-elsewhere``.
    """
    near = [candidate for candidate in minted if candidate.startswith(jti)] if len(jti) >= 4 else []
    near = near or difflib.get_close_matches(jti, minted, n=3, cutoff=0.75)
    if near:
        raise ConfigurationError(
            f"no token minted here has the id {jti}; did you mean {' or '.join(near)}? Nothing was revoked "
            f"(to revoke {jti} as typed, a token minted elsewhere, add --minted-elsewhere)"
        )


def _when(timestamp: float) -> str:
    return datetime.datetime.fromtimestamp(timestamp, datetime.timezone.utc).strftime("%Y-%m-%d %H:%M")
