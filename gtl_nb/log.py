"""The ``gtl_nb`` logger: configurable verbosity, and a filter that never lets a key through.

Every record that passes through the ``gtl_nb`` logger hierarchy is scrubbed: strings that look
like provider credentials (``sk-…``, ``sk-ant-…``, ``AIza…``, AWS access key ids, bearer tokens,
JWTs) and values of secret-named fields (``api_key=…``, ``"authorization": "…"``) are replaced by
``[redacted]`` before any handler sees them.
"""

from __future__ import annotations

import base64
import functools
import logging
import os
import re
import string
from collections.abc import Callable, Iterable
from urllib.parse import quote, quote_plus

LOGGER_NAME = "gtl_nb"

_SECRET_PATTERNS: tuple[re.Pattern[str], ...] = (
    re.compile(r"sk-(?:ant-|proj-)?[A-Za-z0-9_\-]{8,}"),
    re.compile(r"AIza[0-9A-Za-z_\-]{20,}"),
    re.compile(r"\b(?:AKIA|ASIA)[0-9A-Z]{12,}\b"),
    re.compile(r"(?i)bearer\s+[A-Za-z0-9._~+/=\-]{8,}"),
    re.compile(r"eyJ[A-Za-z0-9_\-]+\.[A-Za-z0-9_\-]+\.[A-Za-z0-9_\-]+"),
    re.compile(
        r"(?i)((?:api[_-]?key|x-api-key|x-goog-api-key|authorization|secret[_-]?access[_-]?key|"
        r"session[_-]?token|token|password)[\"']?\s*[:=]\s*[\"']?)([^\s\"',}]+)"
    ),
)


_MASK_CHARACTERS = "*\u2022\u2026"  # *, •, … — and two dots or more ("sk-...abcd"), read as …
_MASKED_TOKEN = re.compile(r"[A-Za-z0-9_\-.*\u2022\u2026]+")
"""A run of what a key and its mask are written with: one greedy character class, so linear in the text."""
_DOTS = re.compile(r"\.{2,}")
_KEEP_AROUND_MASK = 4  # what a masked rendering shows of the key at one end, at least (fewer: a coincidence)


def _might_be_masked(text: str) -> bool:
    return any(mark in text for mark in _MASK_CHARACTERS) or ".." in text


def _masked_words(text: str, is_key: Callable[[str, str, str], bool]) -> str:
    """``text`` with each masked-looking token that ``is_key(token, head, tail)`` says is a masked key
    replaced by ``[redacted]``: a run of key characters holding a mask (``*``, ``•``, ``…`` or ``..``);
    ``head``/``tail`` are the token before its first and after its last mask character. Punctuation
    around the token (quotes, backticks, brackets, ``key=``, a sentence's full stop) is not part of it."""

    def replace(match: re.Match[str]) -> str:
        run = match.group(0)
        core = run.strip(".")
        if not core:
            return run
        masked = _DOTS.sub("\u2026", core)
        first = min((i for i in (masked.find(mark) for mark in _MASK_CHARACTERS) if i >= 0), default=-1)
        if first < 0:
            return run
        last = max(masked.rfind(mark) for mark in _MASK_CHARACTERS)
        if not is_key(masked, masked[:first], masked[last + 1 :]):
            return run
        lead = len(run) - len(run.lstrip("."))
        return run[:lead] + "[redacted]" + run[lead + len(core) :]

    return _MASKED_TOKEN.sub(replace, text)


_ASCII_FOLD = str.maketrans(string.ascii_uppercase, string.ascii_lowercase)
"""Letter case folded in ASCII only: one character for one, so a match in the folded text is at the same
place in the text (``str.lower`` may change a text's length: ``"İ".lower()`` is two characters)."""
_LEAST_PIECE = 12
"""The fewest of a secret's first (or last) characters a text must quote for them to be scrubbed: a key's
first 12 characters are, past a provider's prefix, random — another text holds them only by quoting it."""
_BASE64_RUN = frozenset(string.ascii_letters + string.digits + "+/-_")
"""What a base64 rendering is written with, in either alphabet (its ``=`` padding ends it only)."""


@functools.lru_cache(maxsize=64)
def _forms(secret: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The forms of ``secret`` a provider may quote: those read in any letter case (the secret and its
    percent-encodings, folded), and its base64 renderings, which are read as written — the secret's
    bytes at each of the three places in a group of three (the key alone, ``user:key`` of Basic
    authorisation), in the standard and the URL alphabet, the characters that depend on bytes around
    it left out."""
    folded = dict.fromkeys(
        form.translate(_ASCII_FOLD) for form in (secret, quote(secret, safe=""), quote_plus(secret, safe=""))
    )
    raw = secret.encode("utf-8", "surrogatepass")
    exact: dict[str, None] = {}
    for lead, skip in ((0, 0), (1, 2), (2, 3)):  # the secret after 0, 1 or 2 other bytes of its group
        whole_groups = (lead + len(raw)) // 3 * 4
        encoded = base64.b64encode(b"\0" * lead + raw)[skip:whole_groups].decode("ascii")
        if len(encoded) >= 8:
            exact[encoded] = None
            exact[encoded.replace("+", "-").replace("/", "_")] = None
    return tuple(folded), tuple(exact)


def _quoted_spans(text: str, secret: str) -> list[tuple[int, int]]:
    """Where ``text`` (folded as ``secret`` is) quotes ``secret``: whole, or its first or last
    ``_LEAST_PIECE`` characters or more. ``str.find`` from where the last match ended, each match grown
    by at most the secret's length: linear in the text."""
    spans: list[tuple[int, int]] = []
    piece = min(_LEAST_PIECE, len(secret))
    head, tail = secret[:piece], secret[-piece:]
    found = text.find(head)
    while found >= 0:
        end = found + piece
        while end - found < len(secret) and end < len(text) and text[end] == secret[end - found]:
            end += 1
        spans.append((found, end))
        found = text.find(head, end)
    found = text.find(tail)
    while found >= 0:
        start, end = found, found + piece
        while end - start < len(secret) and start > 0 and text[start - 1] == secret[-(end - start) - 1]:
            start -= 1
        spans.append((start, end))
        found = text.find(tail, end)
    return spans


def _base64_spans(text: str, form: str) -> list[tuple[int, int]]:
    """Where ``text`` holds ``form`` (a base64 rendering of a secret), each grown to the whole run of
    base64 characters around it: the characters at its ends hold bits of the secret too."""
    spans: list[tuple[int, int]] = []
    found = text.find(form)
    while found >= 0:
        start, end = found, found + len(form)
        while start > 0 and text[start - 1] in _BASE64_RUN and (not spans or start > spans[-1][1]):
            start -= 1
        while end < len(text) and (text[end] in _BASE64_RUN or text[end] == "="):
            end += 1
        spans.append((start, end))
        found = text.find(form, end)
    return spans


def _without(text: str, spans: list[tuple[int, int]]) -> str:
    """``text`` with each of ``spans`` (overlapping or not) replaced by ``[redacted]``; spans that overlap
    or touch are one."""
    merged: list[list[int]] = []
    for start, end in sorted(spans):
        if merged and start <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    pieces: list[str] = []
    kept = 0
    for start, end in merged:
        pieces += (text[kept:start], "[redacted]")
        kept = end
    pieces.append(text[kept:])
    return "".join(pieces)


def scrub_secret(text: str, secret: str) -> str:
    """``text`` without ``secret`` (at least 8 characters) in any form a provider has been seen to quote
    a key in: whole or its first or last 12 characters or more (``_LEAST_PIECE``), in any letter case,
    percent-encoded, or base64-encoded (``_forms``); or any masked rendering of it — a token holding a
    mask (``*``, ``•``, ``…``, ``...``) whose part before the mask begins the secret, or whose part after
    it ends the secret, by four characters or more, in any letter case, as providers quote a refused key
    (``Incorrect API key provided: sk-proj-****…abcd``). Linear in the text for each secret."""
    if len(secret) < 8:
        return text
    folded_forms, encoded_forms = _forms(secret)
    folded = text.translate(_ASCII_FOLD)
    spans: list[tuple[int, int]] = []
    for form in folded_forms:
        spans += _quoted_spans(folded, form)
    for form in encoded_forms:
        if form in text:
            spans += _base64_spans(text, form)
    if spans:
        text = _without(text, spans)
    if not _might_be_masked(text):
        return text
    secret = folded_forms[0]
    return _masked_words(
        text,
        lambda _, head, tail: (
            (len(head) >= _KEEP_AROUND_MASK and secret.startswith(head.translate(_ASCII_FOLD)))
            or (len(tail) >= _KEEP_AROUND_MASK and secret.endswith(tail.translate(_ASCII_FOLD)))
        ),
    )


def quotes_secret(text: str, secrets: Iterable[str]) -> bool:
    """Whether ``text`` quotes one of ``secrets`` (each of at least 8 characters): whole, in any letter
    case, or in a masked rendering (``scrub_secret``). For a provider's text shown as a name — a model
    id, the model that served an answer — which is left out rather than edited."""
    folded: str | None = None
    for secret in secrets:
        if len(secret) < 8:
            continue
        if folded is None:
            folded = text.casefold()
        secret_folded = secret.casefold()
        # the key whole, or masked (its first or last characters, at least _KEEP_AROUND_MASK of them), holds
        # one of its two ends: without either, neither can be there (the common case, answered in C)
        if secret_folded[:_KEEP_AROUND_MASK] not in folded and secret_folded[-_KEEP_AROUND_MASK:] not in folded:
            continue
        if secret_folded in folded or scrub_secret(folded, secret_folded) != folded:
            return True
    return False


def redact(text: str) -> str:
    """Return ``text`` with anything that looks like a credential replaced by ``[redacted]``."""
    if _might_be_masked(text):  # a provider's masked rendering of an sk- key: its prefix and last characters
        text = _masked_words(text, lambda token, _head, _tail: token.startswith("sk-"))
    for pattern in _SECRET_PATTERNS:
        if pattern.groups >= 2:
            text = pattern.sub(lambda m: m.group(1) + "[redacted]", text)
        else:
            text = pattern.sub("[redacted]", text)
    return text


class RedactingFilter(logging.Filter):
    """A logging filter that scrubs credentials from the fully formatted message."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = redact(message)
        if cleaned != message:
            record.msg = cleaned
            record.args = None
        return True


def get_logger(name: str | None = None) -> logging.Logger:
    """The ``gtl_nb`` logger, or a child of it (``get_logger("engine")`` → ``gtl_nb.engine``)."""
    logger = logging.getLogger(LOGGER_NAME if not name else f"{LOGGER_NAME}.{name}")
    # Logger filters only see records created on that very logger, so every child gets its own.
    if not any(isinstance(f, RedactingFilter) for f in logger.filters):
        logger.addFilter(RedactingFilter())
    return logger


def redact_loggers(*namespaces: str) -> None:
    """Put the redacting filter on every logger of ``namespaces`` (``"opentelemetry"``, ``"urllib3"``):
    the namespace's own and each logger under it that exists now. A library whose failures we cause logs
    through its own loggers, outside ``gtl_nb``'s filter — OpenTelemetry's exporter prints the URL it
    could not reach, query and all. (A logger's filter sees only records made on it, so each gets one;
    call this after importing the library, whose modules make their loggers as they are imported.)"""
    manager = logging.Logger.manager
    names = [
        name
        for name in list(manager.loggerDict)
        if any(name == namespace or name.startswith(namespace + ".") for namespace in namespaces)
    ]
    for name in dict.fromkeys([*namespaces, *names]):
        logger = logging.getLogger(name)
        if not any(isinstance(f, RedactingFilter) for f in logger.filters):
            logger.addFilter(RedactingFilter())


_root = logging.getLogger(LOGGER_NAME)
_root.addFilter(RedactingFilter())
_root.addHandler(logging.NullHandler())


def configure_logging(level: int | str | None = None) -> logging.Logger:
    """Set the verbosity of the ``gtl_nb`` logger and attach a redacting stderr handler.

    ``level`` defaults to ``$GTL_NB_LOG`` (``DEBUG``, ``INFO``, ``WARNING`` …) or, when that is unset or
    empty (an environment file's ``GTL_NB_LOG=``), ``WARNING``.
    """
    if level is None:
        level = os.environ.get("GTL_NB_LOG", "").strip() or "WARNING"
    if isinstance(level, str):
        level = logging.getLevelName(level.upper())
        if not isinstance(level, int):
            raise ValueError(f"unknown log level {level!r}; use DEBUG, INFO, WARNING or ERROR")
    _root.setLevel(level)
    if not any(getattr(h, "_gtl_nb", False) for h in _root.handlers):
        handler = logging.StreamHandler()
        handler._gtl_nb = True  # type: ignore[attr-defined]
        handler.addFilter(RedactingFilter())
        handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
        _root.addHandler(handler)
    return _root
