"""A provider's 404 for the URL itself, told apart from a 404 for the model.

Every dialect reads HTTP 404 as ``MODEL_NOT_FOUND``: that is what the services mean by it. But a
``base_url`` missing its ``/v1`` (``OPENAI_BASE_URL=http://localhost:8000``), or carrying one where
the API has none (Ollama's native API under ``http://localhost:11434/v1``), is answered 404 too —
"Invalid URL (POST /chat/completions)", "404 page not found", FastAPI's "Not Found" — and the caller
then reads that the model does not exist and looks in the wrong place. When the provider's message
speaks of no model (nor of an Azure deployment), ``with_url_hint`` keeps the code and adds what to
check: the deployment's ``base_url``, by name only (a gateway's clients never learn the address),
with the shape that dialect expects.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

import msgspec

from gtl_nb.protocol.messages import Error
from gtl_nb.providers.limits import MAX_ERROR_MESSAGE_CHARS

if TYPE_CHECKING:
    from gtl_nb.providers.base import Deployment

# "model"/"models" as a word, but not a path's segment (Gemini's URLs hold "/models/NAME:…", and its
# unknown model is "models/NAME is not found")
_SPEAKS_OF_A_MODEL = re.compile(r"(?<!/)\bmodels?\b|\bdeployment", re.IGNORECASE)

_SHAPES = {
    "openai": "OpenAI's ends in /v1, as https://api.openai.com/v1",
    "openai_compatible": "an OpenAI-compatible server's usually ends in /v1, as http://localhost:8000/v1",
    "anthropic": "Anthropic's is the origin, as https://api.anthropic.com",
    "gemini": "Gemini's is the origin, as https://generativelanguage.googleapis.com",
    "ollama": "Ollama's is the server's root, as http://localhost:11434, without /v1",
}


def with_url_hint(error: Error, deployment: Deployment, status: int) -> Error:
    """``error`` with a hint to check the deployment's ``base_url`` when a 404 names no model."""
    if status != 404 or error.code != "MODEL_NOT_FOUND" or _SPEAKS_OF_A_MODEL.search(error.message):
        return error
    shape = _SHAPES.get(deployment.type)
    hint = f" (HTTP 404 for the URL itself, not for a model: check the base_url of deployment {deployment.name!r}" + (
        f"; {shape})" if shape else ")"
    )
    room = MAX_ERROR_MESSAGE_CHARS - len(hint)  # the provider's words give way, never the hint
    text = error.message if len(error.message) <= room else error.message[: room - 1] + "…"
    return msgspec.structs.replace(error, message=text + hint)
