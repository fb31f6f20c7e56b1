"""The one tokenizer of the offline providers: it counts tokens and splits the echo stream.

A token is one match of ``TOKEN_PATTERN``: a word with its leading space, a run of up to three
digits with its leading space, a run of punctuation with its leading space, or whitespace. This is
the pre-tokenisation step of byte-pair encoders (a word is often one BPE token), so counts are of
the same order as real providers' without shipping a vocabulary. Joining the pieces gives back
the text exactly.

A request's input count is the tokens of every message's text plus ``MESSAGE_OVERHEAD`` per
message (role and separators), the convention chat models bill by.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

TOKEN_PATTERN = re.compile(r" ?[^\W\d_]+| ?\d{1,3}| ?[^\s\w]+|_+|\s+(?!\S)|\s+")
MESSAGE_OVERHEAD = 3


def split_tokens(text: str) -> list[str]:
    """Split ``text`` into tokens; ``"".join(split_tokens(t)) == t``."""
    return TOKEN_PATTERN.findall(text)


def count_tokens(text: str) -> int:
    """The number of tokens in ``text``."""
    return sum(1 for _ in TOKEN_PATTERN.finditer(text))


def count_message_tokens(contents: Iterable[str]) -> int:
    """Input tokens of a conversation given each message's text."""
    return sum(count_tokens(content) + MESSAGE_OVERHEAD for content in contents)
