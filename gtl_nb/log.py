"""The ``gtl_nb`` logger: configurable verbosity, and a filter that never lets a key through.

Every record that passes through the ``gtl_nb`` logger hierarchy is scrubbed: strings that look
like provider credentials (``sk-…``, ``sk-ant-…``, ``AIza…``, AWS access key ids, bearer tokens,
JWTs) and values of secret-named fields (``api_key=…``, ``"authorization": "…"``) are replaced by
``[redacted]`` before any handler sees them.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable, Iterable

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


def scrub_secret(text: str, secret: str) -> str:
    """``text`` without ``secret`` (at least 8 characters) or any masked rendering of it — a token holding
    a mask (``*``, ``•``, ``…``, ``...``) whose part before the mask begins the secret, or whose part
    after it ends the secret, by four characters or more, as providers quote a refused key
    (``Incorrect API key provided: sk-proj-****…abcd``)."""
    if len(secret) < 8:
        return text
    if secret in text:
        text = text.replace(secret, "[redacted]")
    if not _might_be_masked(text):
        return text
    return _masked_words(
        text,
        lambda _, head, tail: (
            (len(head) >= _KEEP_AROUND_MASK and secret.startswith(head))
            or (len(tail) >= _KEEP_AROUND_MASK and secret.endswith(tail))
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
