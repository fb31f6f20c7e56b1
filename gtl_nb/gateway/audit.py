"""The gateway's audit log: one hash-chained JSON line per finished request, fed by the engine's hooks.

**What a record says** (``kind: "request"``): when, who (principal, tenant, key id — a token's
``jti``, never the token — and peer address), which deployment, provider type and model, tokens in
and out, cost, status and error code, duration and time to first token, the trace and session ids,
the failover path with the error code that moved the request on, and the number of retries. Error
*messages* are never written (a provider's message can quote part of a key), and neither are prompts
or answers unless ``verbosity = "full"``. Two other kinds exist: ``dropped`` (how many records the
writer could not keep: a full queue or a failed write) and ``recovery`` (what the writer repaired
after a crash). One record per request: it is written when ``RequestFinished`` arrives, and the
earlier hooks (attempts, retries, failovers, a cache hit) only add to it. A request whose gateway was
killed while it ran never finishes that way: its record (status ``interrupted``, ``recovered: true``,
what the ledger row knows) is written when crash recovery marks its row (``follow_interrupted``).

**The chain.** Every line is ``{..., "prev": "<hash of the previous record>", "hash": "<hash>"}``,
where ``hash`` is the SHA-256 of the line's own bytes up to (without) ``,"hash":…`` plus the closing
brace — the exact bytes written, so verifying never re-serialises. ``seq`` counts records from 1.
The first record's ``prev`` is 64 zeros. The chain's head is **checkpointed** in
``<path>.checkpoint`` (written atomically: a temporary file, then a rename) when due (below): the
last ``seq`` and hash, the current file's name, how many files were rotated, and where the retained
part of the chain starts (retention removes the oldest files and moves that start on). ``verify``
walks every retained file against the checkpoint and reports an edited record (its hash no longer
matches), a deleted one (a gap in ``seq`` or a broken link), a truncated file (a record cut short,
or fewer records than the checkpoint counts), a removed rotated file, and a checkpoint that does not
match the log (replaced or stale).

**Rotation and retention.** Before a line would take the current file past ``max_bytes`` the file
is renamed ``<path>.<n>`` with ``n`` counting up from 1 (the highest number is the newest — the
reverse of ``logging``'s convention, so a rotation is one rename and names never shift), and a new
current file is started. Rotated files beyond ``backups``, and those older than ``retention_days``,
are removed oldest first, after the checkpoint has moved the chain's start past them.

**Off the request path.** The hook subscriber runs on the engine's loop and only builds a small
dict and puts it on a bounded queue; one writer thread appends batches (at most ``BATCH`` records),
flushes them — and ``fsync``s them when ``fsync`` is set — and writes the checkpoint every
``CHECKPOINT_EVERY`` seconds while records keep coming, within that time of the last one, and
whenever ``BATCH`` records would otherwise follow it (``flush()`` and ``close()`` write it too). A full queue
drops the record (counted, logged, and written as a ``dropped`` record later) rather than slowing
requests down. ``close()`` writes everything queued before it returns: nothing is lost on a clean
shutdown.

**On a crash** the records still queued are lost (they were never written); the lines already
written survive a process crash (each batch reaches the operating system before the checkpoint), and
with ``fsync`` a power cut too. The checkpoint can lag the log by up to ``BATCH`` records (those
of the last ``CHECKPOINT_EVERY`` seconds), and the last line can be cut short: ``verify`` reports both
as what a crash leaves, and the next start adopts the complete lines, drops the partial one and
writes a ``recovery`` record that says what it repaired. Anything
a crash cannot explain (an edited, missing or out-of-order record, a log shorter than its
checkpoint) stops the gateway from starting: the evidence is left as it is.

**Where records go.** The file log above (``path``), PostgreSQL (``url``: one chain per gateway run,
``gateway.audit_postgres``), or both at once: the writer thread hands every batch to each destination
(an ``AuditSink``), and each keeps a chain of its own, so one failing never holds back the other.
``AuditLog.degraded_reason`` says, in one line, which destination cannot keep records as it should
(PostgreSQL away and records waiting in the local spool, a disk refusing the file log's writes);
``audit_log_of(engine)`` finds the log subscribed to an engine (what ``/readyz`` asks).
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import math
import os
import threading
import time
import weakref
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Protocol
from urllib.parse import parse_qsl, urlsplit

import msgspec

from gtl_nb.engine.hooks import (
    AttemptStarted,
    CacheHit,
    EngineEvent,
    FailedOver,
    Hooks,
    Reloaded,
    RequestFinished,
    RequestStarted,
    RetryScheduled,
)
from gtl_nb.engine.ledger import iso_utc
from gtl_nb.engine.ledger_interrupted import InterruptedRows
from gtl_nb.engine.lingering import GROUP_COMMIT, LingeringQueue
from gtl_nb.engine.loop import running_loop
from gtl_nb.engine.sqlite_files import create_private_file
from gtl_nb.engine.stores.postgres_pool import is_postgres_url, parse_postgres_url, shown_url
from gtl_nb.engine.stores.urls import refuse_url_for_path
from gtl_nb.log import get_logger
from gtl_nb.protocol.errors import ConfigurationError

__all__ = [
    "AUDIT_KEYS",
    "BATCH",
    "GENESIS",
    "MAX_HELD",
    "AuditLog",
    "AuditSettings",
    "AuditSink",
    "Checkpoint",
    "Problem",
    "VerifyReport",
    "audit_log_of",
    "being_written",
    "check_audit_url",
    "checkpoint_path",
    "default_audit_path",
    "read_records",
    "rotated_files",
    "segment_path",
    "verify",
]

log = get_logger("gateway.audit")

FORMAT_VERSION = 1
GENESIS = "0" * 64
"""The ``prev`` of the very first record."""
BATCH = 256
"""Most records written between two checkpoints: after a crash the log is at most this far ahead."""
CHECKPOINT_EVERY = 0.05
"""Seconds between checkpoints while records keep coming (and at most this long after the last one,
or ``group_commit_ms`` when that is longer): a checkpoint costs a file write, a rename and two
``fsync``s — written after every batch, 4 % of the gateway's CPU at concurrency 1 (docs/benchmarks.md)."""
DEFAULT_MAX_BYTES = 10 * 1024 * 1024
DEFAULT_BACKUPS = 10
DEFAULT_QUEUE_SIZE = 10_000
MIN_MAX_BYTES = 1024
PRUNE_EVERY = 3600.0
"""Seconds between retention checks when no rotation happens (a quiet gateway still prunes)."""
VERBOSITIES = ("metadata", "full")
LOCK_TRIES = 20
"""Tries, 10 ms apart, at taking the log's lock (``being_written`` holds it shared for an instant)."""
RETRY_EVERY = 1.0
"""Seconds between the writer's looks at a degraded destination while no record arrives (it drains
PostgreSQL's spool once the server answers, so ``degraded_reason`` clears without traffic)."""
URL_FORMS = "postgresql://user:password@host:5432/database (or postgres://, postgresql+psycopg://)"
_LEDGER_ONLY_OPTIONS = ("lease", "renew", "pool_max")  # the PostgreSQL ledger's URL options: no meaning here
_REPLICA_CHARACTERS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.-_")
_SCHEME_CHARACTERS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789+-.")  # RFC 3986
_MAX_TEXT = 256  # identifiers written to a record are cut here: a caller chooses session ids and model names
_MAX_PENDING = 65_536  # sessions followed at once; more means RequestFinished went missing somewhere
ROW_WAIT = 10.0
"""Seconds ``close`` and ``flush`` wait for the ledger to commit the rows of records still held for them
(the ledger's writer commits every ``group_commit_ms``; only a ledger stuck on its file takes longer)."""
MAX_HELD = 10_000
"""Most records held in memory for their ledger rows (a window's worth of requests, normally). A ledger that
stops committing — PostgreSQL away under ``[ledger] strict_durability``, a SQLite file locked by another
process whose spool the disk refuses too — would hold them without end; past this many the oldest is
written without waiting for its row (one warning as that begins, one line as it ends, ``degraded_reason``
meanwhile): every record kept, the chain whole, only the order "row first, record after" given up for
those records."""

AUDIT_KEYS: Mapping[str, str] = MappingProxyType(
    {
        "enabled": "write the audit log (default true once the [gateway.audit] table exists)",
        "path": "the current log file (default: audit.jsonl beside the usage ledger, unless url is set); "
        "rotated files add .1, .2, …",
        "url": f"send the records to PostgreSQL, one chain per gateway run: {URL_FORMS}; "
        "with path as well, both are written",
        "replica": "names this gateway's chains in PostgreSQL (default: the host name; a run adds :pid:random)",
        "spool_path": "where records wait while PostgreSQL is away (default: audit-spool-<digest>.jsonl "
        "beside the usage ledger)",
        "max_bytes": f"rotate before the current file grows past this many bytes (default {DEFAULT_MAX_BYTES})",
        "backups": f"rotated files kept (default {DEFAULT_BACKUPS}; 0 keeps none)",
        "retention_days": "rotated files older than this many days are removed (default: only backups limits them)",
        "verbosity": '"metadata" (default): no prompt or answer is written; "full": both are',
        "fsync": "force each batch (and each spooled one) to disk before its checkpoint (default true)",
        "queue_size": f"records waiting for the writer before new ones are dropped (default {DEFAULT_QUEUE_SIZE})",
        "group_commit_ms": f"milliseconds a busy writer gathers records into one write and fsync (1 to 1000; "
        f"default {GROUP_COMMIT * 1000:g}): the most a SIGKILL can lose",
    }
)
"""The keys of ``[gateway.audit]`` and what each means (docs/operations.md has the same list)."""


# ----------------------------------------------------------------------------------------------
# Settings


def default_audit_path(environ: Mapping[str, str] | None = None) -> Path:
    """``audit.jsonl`` in the user data directory, beside the usage ledger."""
    from gtl_nb.engine.ledger import default_ledger_path

    return default_ledger_path(environ).parent / "audit.jsonl"


@dataclass(frozen=True)
class AuditSettings:
    """``[gateway.audit]``, typed (``AUDIT_KEYS`` says what each field means).

    ``path`` is the file log (``None``: no file), ``url`` the PostgreSQL database (``None``: none); at
    least one is set when the log is enabled, and with both every record goes to each. ``url`` may hold
    a password: it is left out of ``repr``, and ``shown_url`` is the form for messages."""

    path: Path | None = None
    enabled: bool = True
    max_bytes: int = DEFAULT_MAX_BYTES
    backups: int = DEFAULT_BACKUPS
    retention_days: float | None = None
    verbosity: str = "metadata"
    fsync: bool = True
    queue_size: int = DEFAULT_QUEUE_SIZE
    group_commit: float = GROUP_COMMIT
    url: str | None = field(default=None, repr=False)
    replica: str | None = None
    spool_path: Path | None = None

    def __post_init__(self) -> None:
        if self.enabled and self.path is None and self.url is None:
            raise ConfigurationError("[gateway.audit] needs a path (the file log) or a url (PostgreSQL), or both")

    @property
    def shown_url(self) -> str | None:
        """``url`` with its password replaced by ``***`` (``None`` without a database)."""
        return None if self.url is None else shown_url(self.url)

    @property
    def where(self) -> str:
        """The destinations, for messages: the file, the database (never its password), or both."""
        places = [str(place) for place in (self.path, self.shown_url) if place is not None]
        return " and ".join(places) or "(nowhere)"

    @classmethod
    def from_table(
        cls, table: Mapping[str, Any] | None, *, base: Path, environ: Mapping[str, str] | None = None
    ) -> AuditSettings:
        """The settings of a ``[gateway.audit]`` table, checked key by key; no table means no audit log.
        A relative ``path`` or ``spool_path`` starts at ``base`` (the configuration file's folder).
        With ``url`` and no ``path`` the records go to PostgreSQL only."""
        where = "[gateway.audit]"
        if table is None:
            return cls(path=default_audit_path(environ), enabled=False)
        if not isinstance(table, Mapping):
            raise ConfigurationError(f"{where} must be a table")
        unknown = sorted(str(key) for key in table if key not in AUDIT_KEYS)
        if unknown:
            raise ConfigurationError(f"unknown key {unknown[0]!r} in {where} (known: {', '.join(AUDIT_KEYS)})")
        for key in ("enabled", "fsync"):
            if key in table and not isinstance(table[key], bool):
                raise ConfigurationError(f"{where} {key} must be true or false")
        path = _text(table, "path", where)
        spool = _text(table, "spool_path", where)
        for key, value in (("path", path), ("spool_path", spool)):  # a URL read as a path: a folder of its name
            refuse_url_for_path(value, f"{where} {key}", "a file's path (a postgresql:// URL goes in url)")
        max_bytes = _integer(table, "max_bytes", DEFAULT_MAX_BYTES, MIN_MAX_BYTES, where)
        backups = _integer(table, "backups", DEFAULT_BACKUPS, 0, where)
        queue_size = _integer(table, "queue_size", DEFAULT_QUEUE_SIZE, 1, where)
        window = table.get("group_commit_ms", GROUP_COMMIT * 1000)
        if isinstance(window, bool) or not isinstance(window, (int, float)) or not 1 <= window <= 1000:
            raise ConfigurationError(f"{where} group_commit_ms must be a number of milliseconds from 1 to 1000")
        days = table.get("retention_days")
        if days is not None and (
            isinstance(days, bool) or not isinstance(days, (int, float)) or not math.isfinite(days) or days <= 0
        ):
            raise ConfigurationError(f"{where} retention_days must be a positive number of days")
        verbosity = table.get("verbosity", "metadata")
        if verbosity not in VERBOSITIES:
            raise ConfigurationError(f'{where} verbosity must be "metadata" or "full"')
        url = table.get("url")
        options = check_audit_url(url, f"{where} url") if url is not None else {}
        replica = _replica(table.get("replica"), where)
        for key, value in (("replica", replica), ("spool_path", spool)):
            if value is not None and url is None:
                raise ConfigurationError(f"{where} {key} belongs to the PostgreSQL audit log: set url as well")
            if value is not None and options.get(key) is not None:
                raise ConfigurationError(f"{where} {key} is given twice, as a key and in the url: keep one")
        if path:
            file: Path | None = base / Path(path).expanduser()
        else:
            file = None if url is not None else default_audit_path(environ)
        return cls(
            path=file,
            enabled=table.get("enabled", True),
            max_bytes=max_bytes,
            backups=backups,
            retention_days=None if days is None else float(days),
            verbosity=verbosity,
            fsync=table.get("fsync", True),
            queue_size=queue_size,
            group_commit=window / 1000,
            url=url,
            replica=replica,
            spool_path=base / Path(spool).expanduser() if spool else None,
        )


def _text(table: Mapping[str, Any], key: str, where: str) -> str | None:
    value = table.get(key)
    if value is not None and (not isinstance(value, str) or not value):
        raise ConfigurationError(f"{where} {key} must be a non-empty string")
    return value


def _replica(value: Any, where: str) -> str | None:
    """``replica``: a short name of letters, digits, ``.``, ``-`` and ``_`` (it goes into every chain's id)."""
    if value is None:
        return None
    if not isinstance(value, str) or not 0 < len(value) <= 64 or not set(value) <= _REPLICA_CHARACTERS:
        raise ConfigurationError(f"{where} replica must be 1 to 64 letters, digits, '.', '-' or '_'")
    return value


def check_audit_url(url: Any, where: str = "[gateway.audit] url") -> dict[str, Any]:
    """Check ``url``, the audit log's database (``where`` names the setting in messages, which never
    quote the password); returns its ``replica`` and ``spool_path`` options (``None`` when not given)."""
    if not isinstance(url, str) or not url:
        raise ConfigurationError(f"{where} must be a string: {URL_FORMS}")
    scheme, separator, _ = url.partition("://")
    if not separator:
        raise ConfigurationError(f"{where} is not a URL; accepted: {URL_FORMS}; a file log is set with path")
    if not is_postgres_url(url):
        # quoted only when it looks like a scheme: a mistyped URL may have its password before "://"
        plausible = scheme[:1].isalpha() and len(scheme) <= 20 and set(scheme) <= _SCHEME_CHARACTERS
        named = f"{scheme}://" if plausible else "its scheme"
        raise ConfigurationError(
            f"{where}: {named} is not a database the audit log can use; accepted: {URL_FORMS}; "
            "a file log is set with path"
        )
    try:
        query = urlsplit(url).query
    except ValueError:
        query = ""  # parse_postgres_url says what is wrong with it
    for name, _ in parse_qsl(query, keep_blank_values=True):
        if name in _LEDGER_ONLY_OPTIONS:
            raise ConfigurationError(f"{where}: {name} is an option of the PostgreSQL ledger, not of the audit log")
    parsed = parse_postgres_url(url, where=where)
    return {key: parsed.options.get(key) for key in ("replica", "spool_path")}


def _integer(table: Mapping[str, Any], key: str, default: int, least: int, where: str) -> int:
    value = table.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < least:
        raise ConfigurationError(f"{where} {key} must be a whole number of at least {least}")
    return value


# ----------------------------------------------------------------------------------------------
# The chain: sealing a record into a line, and reading it back

_HASH_KEY = b',"hash":"'
_SUFFIX = len(_HASH_KEY) + 64 + 2  # ,"hash":"<64 hex>"}
_HEX = frozenset("0123456789abcdef")


def _seal(record: Mapping[str, Any], prev: str) -> tuple[bytes, str]:
    """The line for ``record`` chained after ``prev``, and its hash."""
    body = json.dumps({**record, "prev": prev}, separators=(",", ":"), allow_nan=False).encode("ascii")
    digest = hashlib.sha256(body).hexdigest()
    return body[:-1] + _HASH_KEY + digest.encode("ascii") + b'"}\n', digest


@dataclass(frozen=True)
class _Sealed:
    """One line read back: what it claims (``seq``, ``prev``, ``stored``) and the hash of its bytes."""

    seq: int
    prev: str
    stored: str
    computed: str


def _is_hash(value: Any) -> bool:
    return isinstance(value, str) and len(value) == 64 and set(value) <= _HEX


def _unseal(raw: bytes) -> _Sealed | None:
    """``raw`` (one line without its newline) read back, or ``None`` when it is not a sealed record."""
    if len(raw) <= _SUFFIX or raw[-_SUFFIX : -_SUFFIX + len(_HASH_KEY)] != _HASH_KEY or not raw.endswith(b'"}'):
        return None
    try:
        record = json.loads(raw)
    except ValueError:
        return None
    if not isinstance(record, dict):
        return None
    seq, prev, stored = record.get("seq"), record.get("prev"), record.get("hash")
    if isinstance(seq, bool) or not isinstance(seq, int) or not _is_hash(prev) or not _is_hash(stored):
        return None
    body = raw[:-_SUFFIX] + b"}"
    return _Sealed(seq=seq, prev=prev, stored=stored, computed=hashlib.sha256(body).hexdigest())


# ----------------------------------------------------------------------------------------------
# Files: names, the checkpoint


def checkpoint_path(path: Path) -> Path:
    """Where the chain's head of the log at ``path`` is checkpointed."""
    return path.with_name(path.name + ".checkpoint")


def segment_path(path: Path, number: int) -> Path:
    """The ``number``-th rotated file of the log at ``path`` (1 is the oldest ever)."""
    return path.with_name(f"{path.name}.{number}")


def rotated_files(path: Path) -> dict[int, Path]:
    """The rotated files of the log at ``path`` that exist, by number."""
    prefix = path.name + "."
    found: dict[int, Path] = {}
    with contextlib.suppress(FileNotFoundError):
        for entry in path.parent.iterdir():
            tail = entry.name[len(prefix) :] if entry.name.startswith(prefix) else ""
            if tail.isascii() and tail.isdigit() and int(tail) > 0:
                found[int(tail)] = entry
    return found


@dataclass(frozen=True)
class Checkpoint:
    """The chain's head and where its retained part starts."""

    count: int = 0
    """The ``seq`` of the last record written (records ever written)."""
    head: str = GENESIS
    """That record's hash."""
    file: str = ""
    """The current file's name."""
    rotations: int = 0
    """The number of the newest rotated file (0: none yet)."""
    first_segment: int = 1
    """The number of the oldest rotated file kept (``rotations + 1`` or more when none is kept)."""
    base_seq: int = 0
    """The ``seq`` just before the first record kept (0 until retention removes a file)."""
    base_prev: str = GENESIS
    """The ``prev`` of the first record kept."""

    def encode(self) -> bytes:
        return json.dumps({"version": FORMAT_VERSION, **self.__dict__}, indent=1).encode("ascii") + b"\n"

    @classmethod
    def read(cls, path: Path) -> Checkpoint | None:
        """The checkpoint at ``path``; ``None`` when there is none; ``ValueError`` when it is not one."""
        try:
            data = json.loads(path.read_bytes())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise ValueError(str(getattr(exc, "strerror", None) or exc)) from None
        if not isinstance(data, dict) or data.get("version") != FORMAT_VERSION:
            raise ValueError("not a checkpoint of this format")
        try:
            point = cls(**{key: data[key] for key in cls.__dataclass_fields__})
        except (KeyError, TypeError) as exc:
            raise ValueError(f"a field is missing ({exc})") from None
        numbers = (point.count, point.rotations, point.first_segment, point.base_seq)
        if not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in numbers):
            raise ValueError("a count is not a whole number")
        if not (_is_hash(point.head) and _is_hash(point.base_prev) and isinstance(point.file, str)):
            raise ValueError("a hash is malformed")
        return point


def _write_atomic(path: Path, data: bytes, *, fsync: bool) -> None:
    """Replace ``path`` with ``data`` in one rename (a reader sees the old file or the new one, never half)."""
    temporary = path.with_name(path.name + ".tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
        handle.flush()
        if fsync:
            os.fsync(handle.fileno())
    os.replace(temporary, path)
    if fsync:
        _fsync_directory(path.parent)


def _fsync_directory(directory: Path) -> None:
    """Make a rename durable (POSIX; a no-op where directories cannot be opened)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# ----------------------------------------------------------------------------------------------
# Verification

CRASH_KINDS = frozenset({"torn", "ahead"})
"""Problems an abrupt stop leaves (the next start repairs them); every other kind is tampering or damage."""


@dataclass(frozen=True)
class Problem:
    """One thing wrong with an audit log, and where."""

    kind: str
    """``edited``, ``deleted``, ``truncated``, ``unreadable``, ``missing_file``, ``checkpoint``; or what a
    crash leaves: ``torn`` (the last line cut short) and ``ahead`` (records the checkpoint lags behind)."""
    message: str
    file: str | None = None
    line: int | None = None
    seq: int | None = None
    offset: int | None = None
    """For ``torn``: the byte offset where the partial line starts."""

    @property
    def after_crash(self) -> bool:
        """True for what an abrupt stop of the writer leaves (``CRASH_KINDS``)."""
        return self.kind in CRASH_KINDS


@dataclass(frozen=True)
class VerifyReport:
    """What ``verify`` found: ``ok`` when the chain is intact and matches its checkpoint."""

    path: Path
    records: int
    files: tuple[str, ...]
    problems: tuple[Problem, ...]
    last_seq: int | None = None
    last_hash: str | None = None
    checkpoint: Checkpoint | None = None

    @property
    def ok(self) -> bool:
        return not self.problems

    def describe(self, *, live: bool = False) -> str:
        """A few lines for a person: the verdict, then each problem and where it is. ``live``: a running
        gateway writes the log (``being_written``), so what a crash would leave is its newest records."""
        files = f"{len(self.files)} file{'s' if len(self.files) != 1 else ''}"
        head = f"audit log {self.path}: {self.records} record{'s' if self.records != 1 else ''} in {files}"
        if live and self.problems and all(problem.after_crash for problem in self.problems):
            return (
                f"{head}; the chain is intact; a running gateway is writing it, and its newest records are not "
                f"checkpointed yet (they are within {CHECKPOINT_EVERY * 1000:.0f} ms)"
            )
        if self.ok:
            tip = f"; head {self.last_hash[:16]}… at record {self.last_seq}" if self.last_hash else ""
            return f"{head}; the chain is intact and matches its checkpoint{tip}{self._retained()}"
        lines = [f"{head}; {len(self.problems)} problem{'s' if len(self.problems) != 1 else ''}:"]
        lines.extend(f"  - {problem.message}" for problem in self.problems)
        if all(problem.after_crash for problem in self.problems):
            lines.append(
                "  (what an abrupt stop leaves: the gateway repairs it, and records that, when it next starts)"
            )
        return "\n".join(lines)

    def _retained(self) -> str:
        """Where the kept part of the chain starts, when retention removed older files: intact means the
        records kept are whole, not that every record ever written is still there."""
        gone = self.checkpoint.base_seq if self.checkpoint is not None else 0
        if not gone:
            return ""
        plural = "s" if gone != 1 else ""
        return (
            f"\n  (it begins at record {gone + 1}: the {gone} record{plural} before it were in older files, "
            "removed by rotation — [gateway.audit] backups and max_bytes say how many are kept)"
        )


class _Walk:
    """The state of one verification pass over the chain."""

    def __init__(self, checkpoint: Checkpoint | None, first_known: bool) -> None:
        self.checkpoint = checkpoint
        start = checkpoint or Checkpoint()
        self.expect_seq: int | None = start.base_seq + 1 if first_known else None
        self.expect_prev: str | None = start.base_prev if first_known else None
        self.problems: list[Problem] = []
        self.records = 0
        self.last_seq: int | None = None
        self.last_hash: str | None = None
        self.hash_at_count: str | None = None
        self.torn: Problem | None = None

    def lost_track(self) -> None:
        """After a gap already reported, take the next record as it comes (one problem, not two)."""
        self.expect_seq = self.expect_prev = None

    def line(self, name: str, number: int, offset: int, raw: bytes) -> None:
        if self.torn is not None:  # a cut-short line with records after it: a damaged file, not a crash
            torn, self.torn = self.torn, None
            message = f"{torn.file} line {torn.line} is cut short (a truncated file)"
            self.problems.append(Problem("truncated", message, torn.file, torn.line))
            self.lost_track()
        if not raw.endswith(b"\n"):
            self.torn = Problem(
                "torn",
                f"{name} line {number} is cut short after {len(raw)} bytes (the writer stopped mid-line)",
                name,
                number,
                offset=offset,
            )
            return
        sealed = _unseal(raw[:-1])
        if sealed is None:
            self.problems.append(Problem("unreadable", f"{name} line {number} is not an audit record", name, number))
            self.lost_track()
            return
        where = f"{name} line {number} (record {sealed.seq})"
        if sealed.computed != sealed.stored:
            self.problems.append(
                Problem("edited", f"{where} was changed: its hash does not match its content", name, number, sealed.seq)
            )
        elif self.expect_seq is not None and sealed.seq > self.expect_seq:
            missing = sealed.seq - self.expect_seq
            span = f"record {self.expect_seq}" if missing == 1 else f"records {self.expect_seq}-{sealed.seq - 1}"
            self.problems.append(Problem("deleted", f"{span} missing before {where}", name, number, sealed.seq))
        elif self.expect_seq is not None and sealed.seq < self.expect_seq:
            self.problems.append(
                Problem("edited", f"{where} is out of order (record {self.expect_seq} expected)", name, number)
            )
        elif self.expect_prev is not None and sealed.prev != self.expect_prev:
            self.problems.append(
                Problem(
                    "edited",
                    f"{where} does not chain to the record before it: that record was changed or removed",
                    name,
                    number,
                    sealed.seq,
                )
            )
        self.expect_seq, self.expect_prev = sealed.seq + 1, sealed.stored
        self.last_seq, self.last_hash = sealed.seq, sealed.stored
        self.records += 1
        if self.checkpoint is not None and sealed.seq == self.checkpoint.count:
            self.hash_at_count = sealed.stored

    def finish(self, path: Path) -> None:
        if self.torn is not None:
            self.problems.append(self.torn)
        point = self.checkpoint
        if point is None:
            return
        name = checkpoint_path(path).name
        if point.file and point.file != path.name:
            self.problems.append(Problem("checkpoint", f"{name} belongs to {point.file}, not {path.name}", name))
        last = point.base_seq if self.last_seq is None else self.last_seq
        if last < point.count:
            self.problems.append(
                Problem(
                    "truncated",
                    f"the log ends at record {last} but {name} counts {point.count}: "
                    f"the last {point.count - last} record(s) were removed (a truncated or deleted file)",
                    name,
                )
            )
        elif last == point.count and (self.last_hash if self.last_seq is not None else point.base_prev) != point.head:
            self.problems.append(
                Problem(
                    "checkpoint",
                    f"the last record does not match {name} (the checkpoint was replaced, or the record rewritten)",
                    name,
                )
            )
        elif last > point.count:
            known = self.hash_at_count if point.count > point.base_seq else point.base_prev
            if known != point.head:
                message = f"record {point.count} does not match the head in {name} (the checkpoint was replaced)"
                self.problems.append(Problem("checkpoint", message, name))
            elif last - point.count > BATCH:
                message = (
                    f"{last - point.count} records follow the head in {name}, more than one batch: "
                    "the checkpoint was replaced with an older one"
                )
                self.problems.append(Problem("checkpoint", message, name))
            else:
                self.problems.append(
                    Problem(
                        "ahead",
                        f"{last - point.count} record(s) after the head in {name}: written just before the "
                        "writer stopped abruptly — or the checkpoint was replaced with an older one",
                        name,
                    )
                )


def verify(path: str | os.PathLike[str]) -> VerifyReport:
    """Check the audit log whose current file is ``path`` (its rotated files and checkpoint beside it)."""
    path = Path(path)
    problems: list[Problem] = []
    point: Checkpoint | None = None
    cp_name = checkpoint_path(path).name
    try:
        point = Checkpoint.read(checkpoint_path(path))
    except ValueError as exc:
        problems.append(Problem("checkpoint", f"{cp_name} is unreadable ({exc})", cp_name))
    present = rotated_files(path)
    current_has_data = path.is_file() and path.stat().st_size > 0
    if point is None and not problems:
        if not present and not current_has_data:
            return VerifyReport(path=path, records=0, files=(), problems=())
        problems.append(
            Problem("checkpoint", f"{cp_name} is missing: the head of the chain cannot be checked", cp_name)
        )
    first = point.first_segment if point is not None else min(present, default=1)
    walk = _Walk(point, first_known=point is not None or first == 1)
    walk.problems.extend(problems)
    rotations = point.rotations if point is not None else 0
    top = max(rotations, max(present, default=0))
    files: list[str] = []
    for number in range(first, top + 1):
        segment = segment_path(path, number)
        if number not in present:
            walk.problems.append(
                Problem("missing_file", f"the rotated file {segment.name} is missing (removed?)", segment.name)
            )
            walk.lost_track()
            continue
        if number > rotations:
            walk.problems.append(
                Problem("ahead", f"{segment.name} is newer than {cp_name} (rotated just before a stop)", segment.name)
            )
        files.append(segment.name)
        _walk_file(segment, walk)
    if path.is_file():
        files.append(path.name)
        _walk_file(path, walk)
    walk.finish(path)
    return VerifyReport(
        path=path,
        records=walk.records,
        files=tuple(files),
        problems=tuple(walk.problems),
        last_seq=walk.last_seq,
        last_hash=walk.last_hash,
        checkpoint=point,
    )


def _walk_file(path: Path, walk: _Walk) -> None:
    offset = 0
    with path.open("rb") as handle:
        for number, raw in enumerate(handle, 1):
            walk.line(path.name, number, offset, raw)
            offset += len(raw)


def _first_link(path: Path) -> tuple[int, str] | None:
    """``(seq - 1, prev)`` of the first record in ``path``: where a chain starting there joins the one before."""
    try:
        with path.open("rb") as handle:
            raw = handle.readline()
    except FileNotFoundError:
        return None
    sealed = _unseal(raw.rstrip(b"\n")) if raw.endswith(b"\n") else None
    return None if sealed is None else (sealed.seq - 1, sealed.prev)


# ----------------------------------------------------------------------------------------------
# The files, as the writer thread sees them


class _ChainFiles:
    """Appends sealed records to the log, rotates, prunes and checkpoints. Used by one thread at a time:
    the constructor (recovery) runs before the writer thread starts, everything else on that thread."""

    def __init__(self, settings: AuditSettings, wall_clock: Callable[[], float]) -> None:
        if settings.path is None:
            raise ValueError("the file log needs settings.path")
        self.path: Path = settings.path
        self.settings = settings
        self.wall_clock = wall_clock
        self._lock_fd = _lock(self.path)
        try:
            self.point, self.recovered = self._recover()
            create_private_file(self.path, what="audit log", error=ConfigurationError)
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND)
        except BaseException:
            _unlock(self._lock_fd)
            raise
        self._size = os.fstat(self._fd).st_size
        self._saved_count = self.point.count  # the count in the checkpoint file (``_recover`` wrote it)
        self._saved_at = time.monotonic()
        self._last_prune = -math.inf
        self._write_problem: str | None = None  # the last write's failure, until one succeeds
        self._checkpoint_problem: str | None = None
        self.prune()

    @property
    def degraded_reason(self) -> str | None:
        """Why the file log cannot keep records now (the disk refused the last write), or ``None``."""
        problem = self._write_problem or self._checkpoint_problem
        return None if problem is None else f"audit log {self.path}: {problem}"

    def retry(self) -> None:
        """A failed write is counted and the next batch tries again; a failed checkpoint is written
        again here (the writer calls this while the log is degraded, records or not)."""
        if self._checkpoint_problem is not None:
            self.sync()

    # -- start-up

    def _recover(self) -> tuple[Checkpoint, dict[str, Any] | None]:
        """The checkpoint to continue from, and the ``recovery`` record to write first (if a crash needed one)."""
        cp_file = checkpoint_path(self.path)
        if not cp_file.exists() and not rotated_files(self.path) and not _has_data(self.path):
            point = Checkpoint(file=self.path.name)  # a new log: its checkpoint exists before its first record
            _write_atomic(cp_file, point.encode(), fsync=self.settings.fsync)
            return point, None
        report = verify(self.path)
        if report.ok and report.checkpoint is not None:
            return report.checkpoint, None
        if not all(problem.after_crash for problem in report.problems) or report.checkpoint is None:
            raise ConfigurationError(
                f"the audit log {self.path} failed verification, so the gateway will not write to it:\n"
                f"{report.describe()}\n"
                f"keep the files as evidence (gtl audit verify --log {self.path}); to start a new log, move "
                f"{self.path.name}* out of {self.path.parent}"
            )
        torn_bytes = 0
        for problem in report.problems:
            if problem.kind == "torn" and problem.file is not None and problem.offset is not None:
                target = self.path.with_name(problem.file)
                torn_bytes += target.stat().st_size - problem.offset
                os.truncate(target, problem.offset)
        old = report.checkpoint
        point = Checkpoint(
            count=report.last_seq if report.last_seq is not None else old.count,
            head=report.last_hash if report.last_hash is not None else old.head,
            file=self.path.name,
            rotations=max(old.rotations, max(rotated_files(self.path), default=0)),
            first_segment=old.first_segment,
            base_seq=old.base_seq,
            base_prev=old.base_prev,
        )
        _write_atomic(cp_file, point.encode(), fsync=self.settings.fsync)
        recovery = {"kind": "recovery", "torn_bytes": torn_bytes, "adopted": point.count - old.count}
        log.warning(
            "audit log %s: repaired after an abrupt stop (%d partial bytes dropped, %d records checkpointed)",
            self.path,
            torn_bytes,
            point.count - old.count,
        )
        return point, recovery

    # -- writing

    def append(self, records: list[dict[str, Any]]) -> int:
        """Seal and write ``records`` in order, checkpointing when due (``CHECKPOINT_EVERY``, or ``BATCH``
        records past the last checkpoint); returns how many could not be written."""
        lost = 0
        chunk: list[bytes] = []
        count, head, size = self.point.count, self.point.head, self._size
        for record in records:
            if count - self._saved_count >= BATCH and self._checkpoint_problem is None:  # never further ahead
                lost += self._commit(chunk, count, head)
                chunk = []
                self._checkpoint()
                count, head, size = self.point.count, self.point.head, self._size
            line, digest = _seal({"v": FORMAT_VERSION, "seq": count + 1, **record}, head)
            if size > 0 and size + len(line) > self.settings.max_bytes:
                lost += self._commit(chunk, count, head)
                chunk = []
                self._rotate()
                count, head, size = self.point.count, self.point.head, self._size
                line, digest = _seal({"v": FORMAT_VERSION, "seq": count + 1, **record}, head)
            chunk.append(line)
            size += len(line)
            count, head = count + 1, digest
        lost += self._commit(chunk, count, head)
        if time.monotonic() - self._saved_at >= CHECKPOINT_EVERY:
            self.sync()
        if self.wall_clock() - self._last_prune >= PRUNE_EVERY:
            self.prune()
        return lost

    def sync(self) -> None:
        """Write the checkpoint if records were written since the last one."""
        if self.point.count != self._saved_count or self._checkpoint_problem is not None:
            self._checkpoint()

    def _commit(self, chunk: list[bytes], count: int, head: str) -> int:
        """Write ``chunk`` (sealed up to record ``count`` with hash ``head``): the chain's head moves
        there when it was written; returns how many records were lost (all of the chunk, or none)."""
        if not self._write(chunk):
            return len(chunk)
        if chunk:
            self.point = _replace(self.point, count=count, head=head)
        return 0

    def _write(self, lines: list[bytes]) -> bool:
        """Append ``lines`` to the current file; on failure cut the file back to where it was (False)."""
        if not lines:
            return True
        data = b"".join(lines)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(self._fd, view) :]
            if self.settings.fsync:
                os.fsync(self._fd)
        except OSError as exc:
            log.error("audit log %s: cannot write %d record(s) (%s)", self.path, len(lines), exc.strerror or exc)
            self._write_problem = f"cannot write records ({exc.strerror or exc})"
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, self._size)
            return False
        self._size += len(data)
        self._write_problem = None
        return True

    def _checkpoint(self) -> None:
        point = self.point
        try:
            _write_atomic(checkpoint_path(self.path), point.encode(), fsync=self.settings.fsync)
        except OSError as exc:
            log.error("audit log %s: cannot write the checkpoint (%s)", self.path, exc.strerror or exc)
            self._checkpoint_problem = f"cannot write the checkpoint ({exc.strerror or exc})"
        else:
            self._checkpoint_problem = None
            self._saved_count = point.count
        self._saved_at = time.monotonic()  # (a failed write is tried again at the next due time)

    def _rotate(self) -> None:
        """Rename the current file to the next ``<path>.<n>`` and start a new one (a failed rename is
        logged and the current file grows on: records matter more than file sizes)."""
        number = self.point.rotations + 1
        os.close(self._fd)  # before the rename, which Windows refuses on an open file
        try:
            os.replace(self.path, segment_path(self.path, number))
        except OSError as exc:
            log.error("audit log %s: cannot rotate (%s)", self.path, exc.strerror or exc)
            number = 0
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        self._size = os.fstat(self._fd).st_size
        if number:
            self.point = _replace(self.point, rotations=number)
            self._checkpoint()
            self.prune()

    def prune(self) -> None:
        """Remove rotated files beyond ``backups`` or older than ``retention_days``, oldest first; the
        checkpoint moves the chain's start past them before any is removed."""
        self._last_prune = self.wall_clock()
        present = rotated_files(self.path)
        kept = [n for n in sorted(present) if self.point.first_segment <= n <= self.point.rotations]
        cutoff = (
            None if self.settings.retention_days is None else self._last_prune - self.settings.retention_days * 86400
        )
        victims: list[int] = []
        for position, number in enumerate(kept):
            over_count = len(kept) - position > self.settings.backups
            too_old = cutoff is not None and _mtime(present[number]) < cutoff
            if not (over_count or too_old):
                break  # a prefix only: the chain that remains has no hole
            victims.append(number)
        stale = [n for n in present if n < self.point.first_segment]  # left by a stop in the middle of a prune
        if victims:
            first = victims[-1] + 1
            start = _first_link(segment_path(self.path, first)) if first <= self.point.rotations else None
            start = start or _first_link(self.path) or (self.point.count, self.point.head)
            self.point = _replace(self.point, first_segment=first, base_seq=start[0], base_prev=start[1])
            self._checkpoint()
        for number in [*stale, *victims]:
            try:
                present[number].unlink()
            except FileNotFoundError:
                pass
            except OSError as exc:
                log.error("audit log: cannot remove %s (%s)", present[number].name, exc.strerror or exc)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            if self.settings.fsync:
                os.fsync(self._fd)
        self.sync()  # after the records' own fsync: the checkpoint never counts what may not be on disk
        os.close(self._fd)
        _unlock(self._lock_fd)


def _replace(point: Checkpoint, **changes: Any) -> Checkpoint:
    return Checkpoint(**{**point.__dict__, **changes})


def _has_data(path: Path) -> bool:
    return path.is_file() and path.stat().st_size > 0


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return math.inf


def _lock(path: Path) -> int | None:
    """Hold ``<path>.lock``: two writers would fork the chain. ``None`` where ``fcntl`` is missing."""
    try:
        import fcntl
    except ImportError:  # Windows: one gateway per log is the operator's to ensure
        return None
    lock_file = _lock_path(path)
    create_private_file(lock_file, what="audit lock file", error=ConfigurationError)
    fd = os.open(lock_file, os.O_RDWR)
    for attempt in range(LOCK_TRIES):
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return fd
        except OSError:
            if attempt + 1 < LOCK_TRIES:  # ``being_written`` holds it shared for an instant: try again
                time.sleep(0.01)
    os.close(fd)
    raise ConfigurationError(f"another process is writing the audit log {path}; give each gateway its own")


def _lock_path(path: Path) -> Path:
    return path.with_name(path.name + ".lock")


def being_written(path: str | os.PathLike[str]) -> bool:
    """Whether a running gateway writes the log at ``path`` now (it holds ``<path>.lock``). Asked by
    ``gtl audit verify``: the newest records of a live log may not be checkpointed yet."""
    try:
        import fcntl
    except ImportError:
        return False
    try:
        fd = os.open(_lock_path(Path(path)), os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError:
        return True  # a writer holds it exclusively
    finally:
        os.close(fd)  # (releases the shared lock, if taken)
    return False


def _unlock(fd: int | None) -> None:
    if fd is not None:
        os.close(fd)  # closing releases the lock


# ----------------------------------------------------------------------------------------------
# The log: the hook subscriber and the writer thread


@dataclass
class _Pending:
    """What the earlier hooks said about a session still running."""

    started: float
    requested_model: str | None = None
    path: list[str] = field(default_factory=list)
    reasons: list[str] = field(default_factory=list)
    retries: int = 0
    prompt: Any = None


class AuditSink(Protocol):
    """One destination of the records: the file log (``_ChainFiles``) or PostgreSQL
    (``audit_postgres.PostgresAuditSink``). The writer thread is its only caller once it runs."""

    recovered: dict[str, Any] | None
    """A ``recovery`` record to write first (what opening repaired after a crash), or ``None``."""

    @property
    def degraded_reason(self) -> str | None:
        """Why records cannot be kept as they should now (one line), or ``None``."""

    def append(self, records: list[dict[str, Any]]) -> int:
        """Seal ``records`` into this destination's chain and keep them; how many were lost."""

    def retry(self) -> None:
        """Called when no record arrives: every ``RETRY_EVERY`` seconds while degraded (try to recover)
        and, for a destination with a ``probe_every`` (PostgreSQL), at least that often while it is not
        (see whether it still answers: ``/readyz`` must not wait for the next record to say it does not)."""

    def sync(self) -> None:
        """Bring what marks the chain's head up to date (the file log's checkpoint), when records stop
        coming for a moment or a ``flush()`` asks."""

    def close(self) -> None:
        """Keep what is pending, then let go of files and connections (idempotent)."""


_LOGS: weakref.WeakKeyDictionary[Any, AuditLog] = weakref.WeakKeyDictionary()


def audit_log_of(engine: Any) -> AuditLog | None:
    """The open audit log ``AuditLog.for_engine`` subscribed to ``engine``, or ``None`` (``/readyz`` reads
    its ``degraded_reason``)."""
    audit = _LOGS.get(engine)
    return None if audit is None or audit.closed else audit


class AuditLog:
    """The audit log of one gateway: subscribe it to the engine's hooks, ``close()`` it at shutdown.

    ``wall_clock`` stamps records and judges retention; ``clock`` (monotonic) measures durations the
    engine did not report; ``provider_types`` maps deployment names to provider types (``for_engine``
    fills it). Opening checks the existing file log (``verify``) and raises ``ConfigurationError`` when
    it was tampered with or another process writes it; with ``settings.url`` it opens the PostgreSQL
    chain too (an unreachable server is not an error: records wait in the spool, ``degraded_reason``
    says so; a server that refuses the tables is).
    """

    def __init__(
        self,
        settings: AuditSettings,
        *,
        wall_clock: Callable[[], float] = time.time,
        clock: Callable[[], float] = time.monotonic,
        provider_types: Mapping[str, str] | None = None,
        max_held: int = MAX_HELD,
    ) -> None:
        self.settings = settings
        self.path = settings.path
        self.where = settings.where
        self._wall_clock = wall_clock
        self._clock = clock
        self._provider_types = dict(provider_types or {})
        self._full = settings.verbosity == "full"
        self._pending: dict[object, _Pending] = {}  # by the request's hook handle (never its session id)
        # woken only when idle: a busy writer takes a batch every few ms instead of a wake-up per record
        self._queue: LingeringQueue[dict[str, Any]] = LingeringQueue(
            maxsize=settings.queue_size, linger=settings.group_commit
        )
        self._queued = 0  # records handed to the writer (the loop thread counts them)
        self._written = 0  # of which the writer has finished (written, or counted as lost)
        self._synced = 0  # of which the destinations have checkpointed (``AuditSink.sync``)
        self._unsynced = False  # the writer wrote records since its last sync (the writer's own)
        self._sync_target = 0  # a flush() waits until this many are synced
        self._progress = threading.Condition()
        self._dropped = 0
        self._dropped_lock = threading.Lock()
        self._closed = False
        # A record waits for its request's ledger row to be committed before it is queued (the ledger's
        # ``when_written``), so a crash can never leave a record without its row; ``None``: a ledger that
        # writes at once or cannot say (in memory, a plug-in, none): records are queued at once.
        self._after_row: Callable[[Callable[[], None]], None] | None = None
        self._held: dict[int, dict[str, Any]] = {}  # records waiting for their rows, by number (under ``_progress``)
        self._held_numbers = itertools.count()
        self._max_held = max(1, max_held)
        self._unheld = 0  # records written without waiting for their rows since more than _max_held waited
        self._unholding = False  # ... and that is going on now (until the rows come again: half the cap)
        self._unsubscribe: list[Callable[[], None]] = []
        #: The file log's writer (``None`` when records go to PostgreSQL only).
        self._files = _ChainFiles(settings, wall_clock) if settings.path is not None else None
        try:
            database = _open_database(settings) if settings.url is not None else None
        except BaseException:
            if self._files is not None:
                self._files.close()
            raise
        self._sinks: list[AuditSink] = [sink for sink in (self._files, database) if sink is not None]
        # how often an idle writer lets a destination that asks for it see whether it still answers
        probes = [every for sink in self._sinks if (every := getattr(sink, "probe_every", None))]
        self._probe_every: float | None = min(probes, default=None)
        self._lost = [0] * len(self._sinks)  # per destination: records it lost, for its next ``dropped`` record
        for index, sink in enumerate(self._sinks):
            if sink.recovered is not None:  # the writer thread is not running yet: this thread may write
                self._lost[index] = sink.append([sink.recovered | {"time": iso_utc(wall_clock())}])
                sink.sync()  # checkpointed now: an idle gateway's log verifies without waiting for traffic
        self._thread = threading.Thread(target=self._run, name="gtl-audit-writer", daemon=True)
        self._thread.start()

    @classmethod
    def for_engine(cls, settings: AuditSettings, engine: Any, **options: Any) -> AuditLog:
        """An audit log that knows ``engine``'s deployments, subscribed to its hooks (and found by
        ``audit_log_of(engine)`` until it is closed)."""
        audit = cls(settings, **options)
        audit.watch(engine)
        return audit

    def watch(self, engine: Any) -> None:
        """Record ``engine``'s requests: learn its deployments' provider types, subscribe to its hooks, and
        be found by ``audit_log_of(engine)`` until closed (the gateway opens the log and the engine at
        the same time, then calls this)."""
        types = {name: deployment.type for name, deployment in engine.deployments.items()}
        self._provider_types = {**self._provider_types, **types}
        self._follow_rows_of(engine)
        self.attach(engine.hooks)
        self.follow_interrupted(getattr(getattr(engine, "stores", None), "ledger", None))
        _LOGS[engine] = self

    def _follow_rows_of(self, engine: Any) -> None:
        """Hold each record until ``engine``'s ledger has committed the request's row, when the ledger
        can say when (``when_written``: the SQLite ledger's writer, called right after a commit; the
        PostgreSQL ledger's, once the row is committed there or in its local spool)."""
        ledger = getattr(getattr(engine, "stores", None), "ledger", None)
        after = getattr(ledger, "when_written", None)
        self._after_row = after if callable(after) else None

    def follow_interrupted(self, ledger: Any) -> None:
        """Write a record for each request ``ledger``'s crash recovery marks ``interrupted`` (its
        ``interrupted``, ``engine.ledger_interrupted``): those waiting now — the rows of a gateway killed
        before this one started — at once, later ones (a PostgreSQL replica's lease ran out) as they come.
        Called on the loop that feeds the hooks (``watch`` is); rows recovered on another thread are
        handed to that loop. A ledger without recovery (in memory, a plug-in) is let be."""
        rows = getattr(ledger, "interrupted", None)
        if not isinstance(rows, InterruptedRows):
            return
        loop = running_loop()

        def take(batch: list[dict[str, Any]]) -> None:
            if loop is None or running_loop() is loop:
                self.record_interrupted(batch)
            else:
                with contextlib.suppress(RuntimeError):  # the loop closed: the gateway has stopped
                    loop.call_soon_threadsafe(self.record_interrupted, batch)

        self._unsubscribe.append(rows.follow(take))

    def record_interrupted(self, rows: list[dict[str, Any]]) -> None:
        """One ``request`` record per ledger row recovery marked ``interrupted`` (dicts of
        ``engine.ledger_interrupted.COLUMNS``): who, session, model and deployment as far as the row
        knows them, status ``interrupted``, ``recovered: true``. The row holds no key and no token, and
        nothing of them is written; neither are a prompt or an answer (the row has none). On the loop
        that feeds the hooks, as every record is queued."""
        for row in rows:
            self._enqueue(self._interrupted_record(row))

    def _interrupted_record(self, row: Mapping[str, Any]) -> dict[str, Any]:
        deployment = _short(row.get("deployment"))
        started, ended = _finite(row.get("time")), _finite(row.get("end_time"))
        duration = round((ended - started) * 1000.0, 3) if started is not None and ended is not None else None
        record: dict[str, Any] = {
            "kind": "request",
            "time": iso_utc(ended if ended is not None else self._wall_clock()),
            "session_id": _short(row.get("session_id")),
            "trace_id": _short(row.get("trace_id")),
            "principal": _short(row.get("user")),
            "tenant": _short(row.get("tenant")),
            "key_id": _short(row.get("key_id")),
            "peer": None,
            "deployment": deployment,
            "provider": _short(row.get("provider_type") or self._provider_types.get(deployment or "")),
            "model": _short(row.get("model")),  # as the row has it: the name the deployment was asked
            "requested_model": None,  # what the caller asked for: the row does not keep it
            "status": "interrupted",
            "error_code": None,
            "tokens_in": None,
            "tokens_out": None,
            "cost": None,
            "usage_estimated": False,
            "duration_ms": _finite(duration),
            "ttft_ms": None,
            "cache_hit": bool(row.get("cache_hit")),
            "failover_path": [],
            "failover_reasons": [],
            "retries": 0,
            "recovered": True,
        }
        if self._full:
            record["prompt"] = None
            record["answer"] = None
        return record

    @property
    def closed(self) -> bool:
        """Whether ``close()`` was called."""
        return self._closed

    @property
    def degraded_reason(self) -> str | None:
        """``None`` when every destination keeps its records; else one line saying which cannot and why
        (PostgreSQL away with the records waiting in the local spool, a disk refusing the file log)."""
        reasons = [reason for sink in self._sinks if (reason := sink.degraded_reason)]
        if not self._closed and not self._thread.is_alive():
            reasons.append("the audit writer thread stopped")
        if self._unholding:
            reasons.append(self._unheld_reason())
        return "; ".join(reasons) or None

    def _unheld_reason(self) -> str:
        return (
            f"the ledger does not commit: more than {self._max_held} records waited for their rows, and "
            f"{self._unheld} were written without waiting for theirs"
        )

    @property
    def degraded_cause(self) -> str | None:
        """``degraded_reason`` in short (each destination's cause alone, where it has one), or ``None``."""
        causes = [
            cause for sink in self._sinks if (cause := getattr(sink, "degraded_cause", None) or sink.degraded_reason)
        ]
        if not self._closed and not self._thread.is_alive():
            causes.append("the audit writer thread stopped")
        if self._unholding:
            causes.append(self._unheld_reason())
        return "; ".join(causes) or None

    def attach(self, hooks: Hooks) -> Callable[[], None]:
        """Subscribe to ``hooks`` (``close()`` unsubscribes); returns the unsubscribe call."""
        unsubscribe = hooks.subscribe(self)
        if self._full:
            hooks.want_answers = True  # the engine then keeps each answer's text for its RequestFinished
        self._unsubscribe.append(unsubscribe)
        return unsubscribe

    # -- the subscriber (the engine's loop)

    def __call__(self, event: EngineEvent) -> None:
        """Take one engine event; only ``RequestFinished`` produces a record."""
        if isinstance(event, Reloaded):  # records name the provider type of the deployments now configured
            types = {name: deployment.type for name, deployment in event.engine.deployments.items()}
            self._provider_types = {**self._provider_types, **types}
            self._follow_rows_of(event.engine)
            return
        if isinstance(event, RequestFinished):
            pending = self._pending.pop(event.handle, None)
            record = self._record(event, pending)
            after = self._after_row
            if after is None:
                self._enqueue(record)
                return
            # the row's end was queued before this event: the record follows once it is committed
            with self._progress:
                number = next(self._held_numbers)
                self._held[number] = record
                oldest = self._held.pop(next(iter(self._held))) if len(self._held) > self._max_held else None
                began = oldest is not None and not self._unholding
                if oldest is not None:
                    self._unheld += 1
                    self._unholding = True
            if began:
                log.warning(
                    "audit log %s: %d records wait for their ledger rows (the ledger does not commit: PostgreSQL "
                    "away under strict_durability, or its file locked by another process); from now on the "
                    "oldest is written without waiting for its row, so a crash could leave such records without rows",
                    self.where,
                    self._max_held,
                )
            if oldest is not None:
                self._enqueue(oldest)
            try:
                after(lambda: self._release(number))
            except Exception:  # a ledger closed under us: the record is not held back for a row that never comes
                log.exception("audit log %s: could not wait for the ledger row of a record", self.where)
                self._release(number)
            return
        if isinstance(event, RequestStarted):
            if len(self._pending) >= _MAX_PENDING:
                self._pending.pop(next(iter(self._pending)))
            self._pending[event.handle] = _Pending(
                started=self._clock(),
                requested_model=_short(event.model),
                prompt=_prompt_of(event) if self._full else None,
            )
            return
        handle = getattr(event, "handle", None)
        pending = self._pending.get(handle) if handle is not None else None
        if pending is None:
            return
        if isinstance(event, AttemptStarted):
            if not pending.path or pending.path[-1] != event.deployment:
                pending.path.append(_short(event.deployment))
        elif isinstance(event, RetryScheduled):
            pending.retries += 1
        elif isinstance(event, FailedOver):
            pending.reasons.append(_code_of(event.reason))
        elif isinstance(event, CacheHit):
            pending.path = [_short(event.deployment)]

    def _record(self, event: RequestFinished, pending: _Pending | None) -> dict[str, Any]:
        context = event.context
        duration = event.latency_ms
        if duration is None and pending is not None:
            duration = round((self._clock() - pending.started) * 1000.0, 3)
        deployment = _short(event.deployment)
        record: dict[str, Any] = {
            "kind": "request",
            "time": iso_utc(self._wall_clock()),
            "session_id": _short(event.session_id),
            "trace_id": _short(context.trace_id),
            "principal": _short(context.principal),
            "tenant": _short(context.tenant),
            "key_id": _short(context.key_id),
            "peer": _short(context.peer),
            "deployment": deployment,
            "provider": _short(getattr(event, "provider_type", None) or self._provider_types.get(deployment or "")),
            "model": _short(event.model),
            "requested_model": pending.requested_model if pending is not None else None,
            "status": event.status,
            "error_code": event.error_code,
            "tokens_in": event.tokens_in,
            "tokens_out": event.tokens_out,
            "cost": _finite(event.cost),
            "usage_estimated": bool(getattr(event, "usage_estimated", False)),
            "duration_ms": _finite(duration),
            "ttft_ms": _finite(getattr(event, "ttft_ms", None)),  # a field the hook may carry (docs/operations.md)
            "cache_hit": event.cache_hit,
            "failover_path": pending.path if pending is not None else [],
            "failover_reasons": pending.reasons if pending is not None else [],
            "retries": pending.retries if pending is not None else 0,
        }
        if self._full:
            record["prompt"] = pending.prompt if pending is not None else None
            record["answer"] = _answer_of(getattr(event, "answer", None))
        return record

    def _release(self, number: int) -> None:
        """A held record whose ledger row is committed: queue it (from the ledger's committing thread; once:
        ``close`` may have queued it already)."""
        with self._progress:
            record = self._held.pop(number, None)
            self._progress.notify_all()
            ended = self._unholding and len(self._held) <= self._max_held // 2
            if ended:
                unheld, self._unheld, self._unholding = self._unheld, 0, False
        if ended:
            log.info(
                "audit log %s: the ledger commits again; records wait for their rows again (%d were written "
                "without waiting for theirs)",
                self.where,
                unheld,
            )
        if record is not None:
            self._enqueue(record)

    def _enqueue(self, record: dict[str, Any]) -> None:
        if self._closed:
            self._count_dropped(1, "the audit log is closed")
            return
        if self._queue.put(record):
            with self._progress:  # the loop's records and those the ledger's writer releases
                self._queued += 1
        else:
            self._count_dropped(1, "the writer's queue is full")

    def _wait_for_rows(self, timeout: float) -> int:
        """Wait until no record is held for its ledger row, at most ``timeout`` seconds; how many still are."""
        with self._progress:
            self._progress.wait_for(lambda: not self._held, timeout)
            return len(self._held)

    def _count_dropped(self, count: int, why: str) -> None:
        with self._dropped_lock:
            first = self._dropped == 0
            self._dropped += count
        if first and not self._closed:
            log.warning("audit log %s: dropping records (%s); a 'dropped' record will count them", self.where, why)
        elif first:
            log.warning("audit log %s: a record arrived after close() and is lost", self.where)

    @property
    def dropped(self) -> int:
        """Records lost (by the queue, or by a destination) and not yet accounted for by a ``dropped`` record."""
        with self._dropped_lock:
            return self._dropped + max(self._lost, default=0)

    # -- the writer thread

    def _run(self) -> None:
        while True:
            # a degraded destination (PostgreSQL away) gets another try now and then, traffic or not
            waiting = any(sink.degraded_reason for sink in self._sinks)
            timeout = RETRY_EVERY if waiting else self._probe_every
            if self._unsynced:
                # the checkpoint follows the last records within CHECKPOINT_EVERY — or within the group
                # commit window when that is longer (a shorter wait would cut every window short)
                due = max(CHECKPOINT_EVERY, self.settings.group_commit)
                timeout = due if timeout is None else min(timeout, due)
            records = self._queue.take(BATCH, timeout=timeout)
            if records:
                try:
                    self._write(records)
                except Exception:  # a bug must not stop the thread: the next batch may still be written
                    log.exception("audit log %s: the writer failed", self.where)
                finally:
                    with self._progress:
                        self._written += len(records)
                        self._progress.notify_all()
                self._unsynced = True
                if self._synced < self._sync_target:  # a flush waits: checkpoint now, under load too
                    self._sync()
            elif self._queue.closed:
                break
            else:
                if self._unsynced or self._synced < self._sync_target:
                    self._sync()
                self._retry()
        for sink in self._sinks:  # PostgreSQL's close writes what its spool holds, if the server answers
            try:
                sink.close()
            except Exception as exc:
                log.error("audit log %s: closing failed (%s)", self.where, getattr(exc, "strerror", None) or exc)

    def _write(self, records: list[dict[str, Any]]) -> None:
        """Hand ``records`` to every destination; each keeps count of what it lost, for its own chain."""
        with self._dropped_lock:
            dropped, self._dropped = self._dropped, 0
        for index, sink in enumerate(self._sinks):
            count = dropped + self._lost[index]
            if count:
                # a batch of its own: whether this one was kept is then known exactly
                notice = {"kind": "dropped", "time": iso_utc(self._wall_clock()), "count": count}
                self._lost[index] = count if self._append(sink, [notice]) else 0
            self._lost[index] += self._append(sink, records)

    def _append(self, sink: AuditSink, records: list[dict[str, Any]]) -> int:
        """``sink.append(records)``; a failure of one destination loses its records, never the others'."""
        try:
            return sink.append(records)
        except Exception:
            log.exception("audit log %s: a destination failed to take %d record(s)", self.where, len(records))
            return len(records)

    def _sync(self) -> None:
        """Every destination's ``sync``; then a waiting ``flush()`` may return."""
        written = self._written
        for sink in self._sinks:
            try:
                sink.sync()
            except Exception:
                log.exception("audit log %s: a destination failed to checkpoint", self.where)
        self._unsynced = False
        with self._progress:
            self._synced = written
            self._progress.notify_all()

    def _retry(self) -> None:
        for sink in self._sinks:
            if sink.degraded_reason or getattr(sink, "probe_every", None):
                try:
                    sink.retry()
                except Exception:
                    log.exception("audit log %s: retrying a destination failed", self.where)

    # -- the end

    def flush(self) -> None:
        """Wait until every record queued so far is written and checkpointed (a destination that cannot
        keep them says so in ``degraded_reason``: records lost, or a checkpoint the disk refused). Records
        held for their ledger rows are waited for first (``ROW_WAIT`` at most)."""
        self._wait_for_rows(ROW_WAIT)
        target = self._queued
        with self._progress:
            self._sync_target = max(self._sync_target, target)
            while self._synced < target and self._thread.is_alive():
                self._queue.wake()  # no lingering: write now
                self._progress.wait(0.1)

    def close(self) -> None:
        """Unsubscribe, write everything queued, checkpoint and close the files (idempotent)."""
        if self._closed:
            return
        for unsubscribe in self._unsubscribe:
            unsubscribe()
        held = self._wait_for_rows(ROW_WAIT)  # the records of the last requests, their rows being committed
        if held:  # a ledger stuck on its file (another process's lock): the audit log still loses nothing
            with self._progress:
                late, self._held = list(self._held.values()), {}
            for record in late:
                self._enqueue(record)
            log.warning(
                "audit log %s: %d record(s) written without their ledger rows committed (still waiting after "
                "%g s): a crash now could leave them without rows",
                self.where,
                held,
                ROW_WAIT,
            )
        self._closed = True
        self._queue.close()  # the writer empties the queue first: a clean shutdown loses nothing
        self._thread.join()
        if self.dropped:
            log.warning("audit log %s: %d record(s) were lost at shutdown", self.where, self.dropped)

    def __enter__(self) -> AuditLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _open_database(settings: AuditSettings) -> AuditSink:
    """The PostgreSQL destination of ``settings.url`` (imported here: a file-only gateway needs no psycopg)."""
    from gtl_nb.gateway.audit_postgres import PostgresAuditSink

    assert settings.url is not None
    return PostgresAuditSink(
        settings.url, replica=settings.replica, spool_path=settings.spool_path, fsync=settings.fsync
    )


def _short(value: str | None) -> str | None:
    return None if value is None else str(value)[:_MAX_TEXT]


def _finite(value: float | None) -> float | None:
    return value if isinstance(value, (int, float)) and math.isfinite(value) else None


def _code_of(reason: str) -> str:
    """The error code at the front of a hook's ``reason`` ("CODE: message"); the message is never kept."""
    code = reason.partition(":")[0].strip()
    return code if code and len(code) <= 40 and code.replace("_", "").isalpha() and code.isupper() else "OTHER"


FULL_TEXT_BYTES = 64 * 1024
"""The most of a prompt (its messages as JSON) or of an answer a ``verbosity = "full"`` record keeps;
past it, the record keeps the start, the whole's size and SHA-256. One caller's 8 MB prompt made a 16 MB
record that rotated the log on its own: about a dozen of them pushed every earlier file out."""


def _prompt_of(event: RequestStarted) -> Any:
    """The request's messages, for ``verbosity = "full"`` (``RequestStarted.request``), or — past
    ``FULL_TEXT_BYTES`` of JSON — what ``_cut_short`` keeps of them."""
    messages = getattr(getattr(event, "request", None), "messages", None)
    if messages is None:
        return None
    encoded = msgspec.json.encode(messages)
    if len(encoded) <= FULL_TEXT_BYTES:
        return msgspec.to_builtins(messages)
    return _cut_short(encoded.decode("utf-8", "replace"), len(encoded), hashlib.sha256(encoded).hexdigest())


def _answer_of(answer: Any) -> Any:
    """The answer's text for a full record, or what ``_cut_short`` keeps of one past ``FULL_TEXT_BYTES``."""
    if not isinstance(answer, str):
        return None
    encoded = answer.encode("utf-8", "surrogatepass")
    if len(encoded) <= FULL_TEXT_BYTES:
        return answer
    return _cut_short(answer, len(encoded), hashlib.sha256(encoded).hexdigest())


def _cut_short(text: str, size: int, digest: str) -> dict[str, Any]:
    """The start of a text too long to keep whole, with its size in bytes and its SHA-256 (so a copy
    kept elsewhere can be matched to the record)."""
    return {"truncated": True, "bytes": size, "sha256": digest, "start": text[: FULL_TEXT_BYTES // 4]}


def read_records(path: Path, *, last: int | None = None) -> Iterator[dict[str, Any]]:
    """The records of one log file, oldest first (the last ``last`` only), as dicts; unreadable lines skipped."""
    with path.open("rb") as handle:
        lines = handle.readlines()
    for raw in lines if last is None else lines[-last:] if last > 0 else []:
        with contextlib.suppress(ValueError):
            record = json.loads(raw)
            if isinstance(record, dict):
                yield record
