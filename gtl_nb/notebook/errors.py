"""How the magics fail: one line, never a traceback.

* A user mistake (an unknown model, a missing key, a bad option, an undefined ``{name}``) becomes one
  ``UsageError`` line that says how to fix it in the notebook (``mistake``).
* A provider's error becomes a ``GTLCellError``: one line with its GTL code (``RATE_LIMIT [openai]: ...``)
  that still fails the cell, so ``Run all`` stops (``cell_error`` picks between the two).

``one_line_errors`` applies these rules around a whole magic call.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from IPython.core.error import UsageError

from gtl_nb.client import CONNECT_READS
from gtl_nb.notebook.args import ArgumentError
from gtl_nb.notebook.template import TemplateError
from gtl_nb.words import a_kind_of

if TYPE_CHECKING:  # pragma: no cover
    from gtl_nb.notebook.session import NotebookSession

__all__ = [
    "GTLCellError",
    "a_kind_of",
    "cell_error",
    "client_for",
    "gateway_way_out",
    "in_notebook_words",
    "mistake",
    "no_gateway",
    "one_line_errors",
]


class GTLCellError(Exception):
    """A cell that failed on the provider's side (or was cancelled): shown as one line, no traceback.

    ``.error`` is what failed (the GTLError, or the cancelled ``Completion``); the line is ``message``,
    by default the error's own (``RATE_LIMIT [openai]: ...``).
    """

    def __init__(self, error: Any, message: str | None = None) -> None:
        super().__init__(message or in_notebook_words(str(error)))
        self.error = error

    def _render_traceback_(self) -> list[str]:
        return [str(self)]


_NOTEBOOK_TOKEN = (
    "with `%gtl connect URL --token-env VAR` (or `--ask-token`, or $GTL_TOKEN in the kernel's environment)"
)
# The client's and the gateway's advice, worded for Python callers, as a notebook user follows it.
_TOKEN_FOR_EVERYONE = (  # the gateway's missing-token advice for every kind of client (tokens.verify.MISSING)
    "send it in the Authorization header as a bearer token (an SDK takes it as its api_key; x-api-key works too), "
    "or give it to gtl_nb.connect as its token argument"
)
_REWORDED = (
    # a notebook user is told the notebook's way alone, not the headers an SDK or curl would send
    (f"{_TOKEN_FOR_EVERYONE} {CONNECT_READS}", f"give it {_NOTEBOOK_TOKEN}"),
    (_TOKEN_FOR_EVERYONE, f"give it {_NOTEBOOK_TOKEN}"),  # (a gateway older than CONNECT_READS)
    ("as gtl_nb.connect's token argument, or as the API key of an OpenAI or Anthropic SDK", _NOTEBOOK_TOKEN),
    (f"or give it to gtl_nb.connect as its token argument {CONNECT_READS}", f"or, in a notebook, {_NOTEBOOK_TOKEN}"),
    # (the same from a gateway older than CONNECT_READS: after the longer form, which holds it)
    ("or give it to gtl_nb.connect as its token argument", f"or, in a notebook, {_NOTEBOOK_TOKEN}"),
    # (a base_url with user:password@: a notebook's header typed in a cell would be saved in it, as api_key=)
    (
        "put the provider's key in api_key or api_key_env, or an authorization header in headers",
        "name the environment variable holding the provider's key with api_key_env=VAR, or put a proxy's "
        "authorization header in a config file read with `%gtl config file=PATH`",
    ),
    ("`gtl models`", "`%gtl models`"),
    ("the models query (gtl_nb's client.models())", "`%gtl models`"),
    ("reading usage (client.usage())", "`%gtl usage`"),
    ("reading other users' usage (client.usage(all_users=True), or a user=)", "`%gtl usage --all-users`"),
    ("listing models (client.models())", "`%gtl models`"),
    # a notebook names its configuration file with %gtl config file=, which connects with config=
    ("(named by config=)", "(named by `%gtl config file=`)"),
)
# %gtl providers NAME key=value ... reaches the configuration as connect's providers= keyword argument
# (the name stops at a bracket or space: each "[providers." is scanned once, so the search stays linear)
_PROVIDERS_KEYWORDS = re.compile(r"\[providers\.(?P<name>[^\[\]\s]+)\] in the keyword arguments")


def in_notebook_words(message: str) -> str:
    """``message`` with advice meant for a Python caller or a terminal reworded for a notebook."""
    for python_words, notebook_words in _REWORDED:
        message = message.replace(python_words, notebook_words)
    return _PROVIDERS_KEYWORDS.sub(r"`%gtl providers \g<name>`", message)


def mistake(exc: BaseException) -> UsageError:
    """A caller mistake from the client as a one-line ``UsageError`` that names the notebook's fix."""
    from gtl_nb.protocol import ConfigurationError, InvalidRequestError, ModelNotFoundError
    from gtl_nb.protocol.errors import escaped

    if isinstance(exc, ModelNotFoundError):
        return UsageError(in_notebook_words(str(exc)))
    if isinstance(exc, (ConfigurationError, InvalidRequestError)):
        # (a gateway's words may hold control characters: shown escaped, as str(exc) shows them)
        message = escaped(getattr(exc, "message", "") or "") or str(exc)
        if "provider" in message and ("configured" in message or "missing" in message):
            message += " (in a notebook: `%gtl providers NAME api_key_env=VAR base_url=...` or `%gtl config file=PATH`)"
        return UsageError(in_notebook_words(message))
    return UsageError(in_notebook_words(str(exc)))


def cell_error(exc: Exception) -> Exception:
    """A caller mistake (set-up, routing, a request refused before sending) -> ``UsageError``; a provider's
    error -> ``GTLCellError``."""
    from gtl_nb.protocol import ConfigurationError, InvalidRequestError, ModelNotFoundError

    if isinstance(exc, (ConfigurationError, ModelNotFoundError)) or (
        isinstance(exc, InvalidRequestError) and getattr(exc, "provider", None) is None
    ):
        return mistake(exc)
    return GTLCellError(exc)


@contextmanager
def one_line_errors(session: NotebookSession | None = None) -> Iterator[None]:
    """Around a magic call: bad options and templates, and GTL errors that escape before any request left
    (set-up and routing mistakes), become a one-line ``UsageError``. When the notebook's gateway gave no
    connection (it has gone since it connected), the line ends with the way out (``gateway_way_out``)."""
    from gtl_nb.protocol import GTLError

    try:
        yield
    except (ArgumentError, TemplateError) as exc:
        raise UsageError(str(exc)) from None
    except GTLError as exc:
        raise UsageError(f"{mistake(exc)}{gateway_way_out(session, exc)}") from None
    except GTLCellError as exc:
        way_out = gateway_way_out(session, exc.error)
        if way_out:
            raise GTLCellError(exc.error, f"{exc}{way_out}") from None
        raise


def gateway_way_out(session: NotebookSession | None, error: object) -> str:
    """`` (the notebook's endpoint is URL: ... `%gtl connect embedded://` ...)`` when ``error`` says the
    notebook's gateway gave no connection — a ``PROVIDER_UNAVAILABLE`` that names no provider (a
    provider behind the gateway is named) — else ``""``."""
    from gtl_nb.notebook.session import is_embedded

    if session is None or is_embedded(session.settings.endpoint):
        return ""
    if getattr(error, "code", None) != "PROVIDER_UNAVAILABLE" or getattr(error, "provider", None):
        return ""
    return f" {no_gateway(session.settings.endpoint)}"


def client_for(session: NotebookSession, endpoint: str | None) -> Any:
    """The session's client for ``endpoint``; a bad config file or endpoint is a ``UsageError``, and so
    is a gateway that cannot be reached or refuses the token — with the way out (``NO_GATEWAY``)."""
    from gtl_nb.notebook.session import is_embedded
    from gtl_nb.protocol import GTLError

    try:
        return session.client(endpoint)
    except ValueError as exc:  # ConfigurationError: a bad config file or endpoint
        raise mistake(exc) from None
    except GTLError as exc:  # the gateway is not there, or refused the token: every magic would fail alike
        url = endpoint or session.settings.endpoint
        if is_embedded(url):
            raise
        staying = session.settings.endpoint
        way_out = no_gateway(url) if url == staying else cell_endpoint_failed(staying)
        raise UsageError(f"{in_notebook_words(str(exc))} {way_out}") from None


def cell_endpoint_failed(staying: str) -> str:
    """What a cell whose own ``--endpoint`` gave no connection is told (said after why): the notebook
    itself is still on ``staying``, and the cell sent the notebook's token, else ``$GTL_TOKEN``."""
    return (
        f"(that was this cell's --endpoint; the notebook stays on {staying}. A cell's --endpoint sends the "
        "notebook's token, else $GTL_TOKEN; `%gtl connect URL --token-env VAR` moves the notebook there "
        "with a token of its own)"
    )


def no_gateway(url: str) -> str:
    """What a notebook whose gateway ``url`` gives no connection can do (said after why)."""
    return (
        f"(the notebook's endpoint is {url}: `%gtl connect {url} --token-env VAR` connects again with a token, "
        "`%gtl connect embedded://` runs the engine in this kernel instead)"
    )
