"""Development authentication: no token, or one static token, and one principal (GhostTokens, ``"jwt"``, are
what a shared gateway uses).

``[gateway] auth`` chooses (the key exists in the configuration schema already):

* ``"none"`` (the default) — no token is checked; every session is accounted to the principal;
* ``"token"`` — the client's ``hello`` must carry the token held in ``$GTL_NB_DEV_TOKEN`` (a secret is
  never a file value), compared in constant time; anything else ends the connection with
  ``AUTH_FAILED``;
* ``"jwt"`` — GhostTokens (``gateway.tokens``; ``gateway.auth.build_authenticator`` chooses).

The principal is the gateway's ``--principal NAME`` (default: the operating-system user running the
gateway, which is what the embedded client accounts to). Real tokens will carry it as ``sub``.
"""

from __future__ import annotations

import getpass
import hmac
import os
from collections.abc import Mapping
from dataclasses import dataclass, field

from gtl_nb.engine.context import RequestContext
from gtl_nb.protocol.errors import AuthenticationError, ConfigurationError

__all__ = ["DEV_TOKEN_ENV", "DevAuth"]

DEV_TOKEN_ENV = "GTL_NB_DEV_TOKEN"
"""The environment variable holding the static development token (``[gateway] auth = "token"``)."""


@dataclass(frozen=True)
class DevAuth:
    """Accepts one static token (or none, when ``token`` is ``None``) for one principal."""

    principal: str
    token: str | None = field(default=None, repr=False)

    @classmethod
    def from_settings(
        cls, mode: str, *, principal: str | None = None, environ: Mapping[str, str] | None = None
    ) -> DevAuth:
        """The authenticator for ``[gateway] auth = mode``; a ``ConfigurationError`` says what is missing."""
        environ = os.environ if environ is None else environ
        who = principal or _os_user()
        if mode == "none":
            return cls(who)
        if mode == "token":
            token = environ.get(DEV_TOKEN_ENV, "").strip()
            if not token:
                raise ConfigurationError(f'[gateway] auth = "token" needs the token in ${DEV_TOKEN_ENV}')
            return cls(who, token)
        raise ConfigurationError(f'[gateway] auth = "{mode}" is not a development mode; use "none" or "token"')

    def __call__(self, offered: str | None) -> RequestContext:
        """The context of a client whose hello carried ``offered``; ``AuthenticationError`` when refused."""
        if self.token is not None and not hmac.compare_digest((offered or "").encode(), self.token.encode()):
            reason = "no token" if offered is None else "a token it does not accept"
            raise AuthenticationError(
                f"the gateway was sent {reason}; send the gateway's development token (its ${DEV_TOKEN_ENV}) as "
                "gtl_nb.connect's token argument, or as the API key of an OpenAI or Anthropic SDK"
            )
        from gtl_nb.gateway.scopes import SCOPE_NAMES

        # one trusted user: every scope (with scopes enforced, a development gateway must keep working)
        key_id = "dev-token" if self.token is not None else None
        return RequestContext(principal=self.principal, key_id=key_id, scopes=frozenset(SCOPE_NAMES))


def _os_user() -> str:
    try:
        return getpass.getuser()
    except Exception:  # no user database (containers)
        return "unknown"
