"""A provider's 404 for the URL itself, told apart from a 404 for the model.

Every dialect reads HTTP 404 as ``MODEL_NOT_FOUND``: that is what the services mean by it. But a
``base_url`` missing its ``/v1`` (``OPENAI_BASE_URL=http://localhost:8000``), or carrying one where
the API has none (Ollama's native API under ``http://localhost:11434/v1``), is answered 404 too —
"Invalid URL (POST /chat/completions)", "404 page not found", FastAPI's "Not Found" — and the caller
then reads that the model does not exist and looks in the wrong place. When the answer reads as a
web server's for an unknown path — a body that is no JSON object (a page, plain text, nothing), or
the words of ``_ROUTE_404`` — and speaks of no model (nor of an Azure deployment), ``with_url_hint``
keeps the code and adds what to check: the deployment's ``base_url``, by name only (a gateway's
clients never learn the address), with the shape that dialect expects. Any other 404 is the
provider's own verdict at the right URL ("No endpoints found that support tool use", "Requested
entity was not found."): left alone.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

import msgspec

from gtl_nb.protocol.messages import Error
from gtl_nb.providers.limits import MAX_ERROR_MESSAGE_CHARS, error_body_json

if TYPE_CHECKING:
    from gtl_nb.providers.base import Deployment

# "model"/"models" as a word, but not a path's segment (Gemini's URLs hold "/models/NAME:…", and its
# unknown model is "models/NAME is not found")
_SPEAKS_OF_A_MODEL = re.compile(r"(?<!/)\bmodels?\b|\bdeployment", re.IGNORECASE)

# what a web framework answers in JSON for a path it has no route for ("Not Found", "Invalid URL (POST
# /chat/completions)", "Method not found: …"); anchored at the start, no nested repeats
_ROUTE_404 = re.compile(
    r"\A\s*(?:(?:404\s*)?(?:page\s+|file\s+)?not\s+found\.?\s*\Z|invalid\s+url\b|method\s+not\s+found\b"
    r"|cannot\s+(?:get|post)\b|no\s+route\b)",
    re.IGNORECASE,
)

_NAME_SHOWN = 100

URL_NOT_MODEL = "HTTP 404 for the URL itself, not for a model"
"""What the hint says (the engine offers no model names on such a 404)."""
"""Characters of a deployment's name the hint shows: the hint always fits the message's bound."""

_SHAPES = {
    "openai": "OpenAI's ends in /v1, as https://api.openai.com/v1",
    "openai_compatible": "an OpenAI-compatible server's usually ends in /v1, as http://localhost:8000/v1",
    "anthropic": "Anthropic's is the origin, as https://api.anthropic.com",
    "gemini": "Gemini's is the origin, as https://generativelanguage.googleapis.com",
    "ollama": "Ollama's is the server's root, as http://localhost:11434, without /v1",
}


def with_url_hint(error: Error, deployment: Deployment, status: int, body: bytes) -> Error:
    """``error``, decoded from the response ``body``, with a hint to check the deployment's ``base_url``
    when a 404 reads as one for an unknown path and names no model."""
    if status != 404 or error.code != "MODEL_NOT_FOUND" or _SPEAKS_OF_A_MODEL.search(error.message):
        return error
    # a provider's API answers its own verdicts in JSON; a page or bare text is the server's, for the path
    if isinstance(error_body_json(body), dict) and not _ROUTE_404.search(error.message):
        return error
    shape = _SHAPES.get(deployment.type)
    name = deployment.name if len(deployment.name) <= _NAME_SHOWN else deployment.name[: _NAME_SHOWN - 1] + "…"
    hint = f" ({URL_NOT_MODEL}: check the base_url of deployment {name!r}" + (f"; {shape})" if shape else ")")
    room = MAX_ERROR_MESSAGE_CHARS - len(hint)  # the provider's words give way, never the hint
    text = error.message if len(error.message) <= room else error.message[: room - 1] + "…"
    return msgspec.structs.replace(error, message=text + hint)
