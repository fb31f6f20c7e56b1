"""``%%gtl --format``: the instruction each format adds to the system prompt, and how the answer is shown.

``markdown`` (the default) shows the answer as is; ``text``, ``json`` and ``code`` show it in a fenced
block (JSON pretty-printed when it parses). ``code_of`` takes the code out of an answer for
``--format code``'s next cell.
"""

from __future__ import annotations

import dataclasses
import json
import re
from typing import Any

__all__ = ["FORMAT_INSTRUCTIONS", "code_of", "shown"]

FORMAT_INSTRUCTIONS = {
    "json": "Answer with JSON only: no prose before or after it, no code fences.",
    "code": "Answer with the code only, in one fenced code block, with no explanation before or after it.",
}
_FENCE_RE = re.compile(r"```[ \t]*(?P<lang>[\w+#.-]*)[^\n]*\n(?P<body>.*?)\n?```", re.DOTALL)


def shown(completion: Any, fmt: str) -> Any:
    """The Completion as ``--format`` shows it: markdown as is; text, json and code in a fenced block."""
    if fmt == "markdown" or completion.tool_calls:
        return completion
    if fmt == "json":
        body = code_of(completion.text)
        try:
            text = "```json\n" + json.dumps(json.loads(body), indent=2, ensure_ascii=False) + "\n```"
        except ValueError as exc:
            print(f"the answer is not valid JSON ({exc}); shown as text")
            text = f"```text\n{completion.text}\n```"
    elif fmt == "code":
        match = _FENCE_RE.search(completion.text)
        language = (match.group("lang") if match else "") or "python"
        text = f"```{language}\n{code_of(completion.text)}\n```"
    else:
        text = f"```text\n{completion.text}\n```"
    return dataclasses.replace(completion, text=text)


def code_of(text: str) -> str:
    """The first fenced block's body, or the whole text when there is no fence."""
    match = _FENCE_RE.search(text)
    return (match.group("body") if match else text).strip("\n")
