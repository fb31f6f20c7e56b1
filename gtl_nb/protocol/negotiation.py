"""Version negotiation: ``hello`` with the versions a client speaks, answered with one version.

The highest version both sides support wins; having none in common is a ``VersionMismatchError``.
Features are flags: the answer names those both sides know (a client that lists none accepts the
server's). A request field that extends GTL 1.0 is a feature too (``protocol.extensions``): the client
refuses a request using one the answer did not name. The client checks the answer with ``check_answer``;
``GTLConnection`` runs the exchange.

Where a session is one HTTP request (HTTP and SSE: no connection, so no hello), the versions travel as
the spec writes its negotiation, in a ``GTL-Version`` header: the client names those it speaks
(``GTL-Version: 1.0``), the server answers with those it supports (``GTL-Version: 1.0, 1.1``) and
refuses a request that names none of them (``negotiate_header``); the gateway names its features in a
``GTL-Features`` header of its provider list's answer (``features_value``), which the client reads first.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from gtl_nb.protocol.errors import VersionMismatchError
from gtl_nb.protocol.extensions import EXTENSION_FEATURES
from gtl_nb.protocol.messages import PROTOCOL_VERSION, Hello

SUPPORTED_VERSIONS: tuple[str, ...] = (PROTOCOL_VERSION,)
IMPLIED_VERSION = "1.0"
"""The version of a peer that names none: a ``hello`` without versions, an HTTP request or WebSocket
upgrade without ``GTL-Version``, a connection whose first frame is not ``hello`` (the spec's peer)."""
FIRST_FEATURES: tuple[str, ...] = ("reasoning", "cancel", "provider_data", "failover", "tool_calls", "query")
"""The flags of a gateway from before the request extensions were negotiated (what it announced).
``query``: the server answers ``query`` messages (usage rows, breakers, live model lists)."""
FEATURES: tuple[str, ...] = tuple(dict.fromkeys(FIRST_FEATURES + EXTENSION_FEATURES))
"""Every feature this side knows: the first flags and each request extension (``protocol.extensions``)."""
VERSION_HEADER = "gtl-version"
"""The HTTP header of the spec's version negotiation (``GTL-Version``; header names ignore case)."""
FEATURES_HEADER = "gtl-features"
"""The HTTP header in which a gateway names the features it knows (``GTL-Features: stop, parts``), on its
answer to ``GET /v1/gtl/providers``: HTTP and SSE have no ``hello``, so the client reads them there."""


def _key(version: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in version.split("."))
    except ValueError:
        raise VersionMismatchError(f"malformed protocol version {version!r} (expected MAJOR.MINOR)") from None


def client_hello(
    versions: Sequence[str] = SUPPORTED_VERSIONS, features: Iterable[str] = FEATURES, token: str | None = None
) -> Hello:
    """The ``hello`` a client sends first; ``token`` only where the transport has no header for it."""
    return Hello(versions=list(versions), features=list(features), token=token)


def negotiate(offer: Hello, supported: Sequence[str] = SUPPORTED_VERSIONS, features: Iterable[str] = FEATURES) -> Hello:
    """The server's answer to a client's ``hello``: the highest common version, common features.

    Versions are compared by MAJOR.MINOR: a patch level (``1.0.2``) changes nothing on the wire
    (the spec's semantic versioning), so an offer of ``1.0.0`` agrees on ``1.0``, answered as the
    server spells it. An offer naming no version speaks 1.0 (``IMPLIED_VERSION``), as an HTTP request
    without a ``GTL-Version`` header does. With no common version, an offer holding a version that is
    not MAJOR.MINOR[.PATCH] (``"1"``, ``"abc"``) is refused as malformed, naming it; a well-formed one
    nobody here speaks is "no common GTL version".
    """
    offered = offer.versions or ([offer.version] if offer.version else [IMPLIED_VERSION])
    wanted = {release for version in offered if (release := _release(version)) is not None}
    common = [version for version in supported if _key(version)[:2] in wanted]
    if not common:
        malformed = [version for version in offered if not _well_formed(version)]
        if malformed:  # a typo, not a peer from the future: say what is wrong with it
            raise VersionMismatchError(
                f"malformed GTL version {malformed[0][:40]!r}: a version is MAJOR.MINOR (such as 1.0); "
                f"this server supports {sorted(supported)}"
            )
        raise VersionMismatchError(
            f"no common GTL version: client offers {_listed(offered)}, server supports {sorted(supported)}"
        )
    version = max(common, key=_key)
    ours = list(features)
    shared = [f for f in ours if f in set(offer.features)] if offer.features else ours
    return Hello(version=version, features=shared)


def check_answer(offer: Hello, answer: Hello) -> Hello:
    """The client's check of the server's answer: the agreed version and features.

    The version must be one the client offered, patch level aside (anything else is a
    ``VersionMismatchError``); a feature the client did not offer is dropped rather than refused, so
    a newer server degrades.
    """
    offered = offer.versions or ([offer.version] if offer.version else [])
    release = _release(answer.version) if answer.version is not None else None
    if release is None or release not in {_release(version) for version in offered}:
        raise VersionMismatchError(
            f"the server answered version {answer.version!r:.40}; the client offered {_listed(offered)}"
        )
    features = [f for f in answer.features if f in set(offer.features)] if offer.features else list(answer.features)
    return Hello(version=answer.version, features=features)


def _release(version: str) -> tuple[int, int] | None:
    """``version``'s MAJOR.MINOR as numbers (``"1.0"``, ``"1.0.3"``), or ``None`` when it is not a
    version (another peer's text: never an error of its own, only not a match)."""
    parts = version.split(".")
    if not 2 <= len(parts) <= 3 or not all(part.isascii() and part.isdigit() and len(part) <= 9 for part in parts):
        return None
    return int(parts[0]), int(parts[1])


def _well_formed(version: str) -> bool:
    """Whether ``version`` is written as a version (MAJOR.MINOR or MAJOR.MINOR.PATCH, ASCII digits), of
    whatever size: one too large to be a release is still a version nobody speaks, not a typo."""
    parts = version.split(".")
    return 2 <= len(parts) <= 3 and all(part.isascii() and part.isdigit() for part in parts)


def _listed(versions: Sequence[str], most: int = 8) -> str:
    """A peer's version list for an error message, bounded (a hello may offer thousands)."""
    shown = [version[:40] for version in sorted(versions)[:most]]
    return f"{shown}" + (f" and {len(versions) - most} more" if len(versions) > most else "")


def header_value(versions: Sequence[str] = SUPPORTED_VERSIONS) -> str:
    """``versions`` as a ``GTL-Version`` header says them: ``"1.0, 1.1"``."""
    return ", ".join(versions)


def features_value(features: Iterable[str] = FEATURES) -> str:
    """``features`` as a ``GTL-Features`` header says them: ``"stop, top_p, parts"``."""
    return ", ".join(features)


def features_from_header(value: str | None) -> tuple[str, ...]:
    """The features a ``GTL-Features`` header names; with no header, ``FIRST_FEATURES`` — a gateway older
    than the header, which announced those flags on every transport with a ``hello`` and read their
    fields (tool calls, reasoning, provider data) over HTTP too: refusing them here only would break a
    tool loop over ``http://`` that works over ``ws://`` against the same gateway."""
    if value is None:
        return FIRST_FEATURES
    return tuple(part.strip() for part in value.split(",") if part.strip())


def negotiate_header(value: str, supported: Sequence[str] = SUPPORTED_VERSIONS) -> str:
    """The version a request's ``GTL-Version`` header (``"1.0"``, ``"1.0, 1.1"``) agrees on with ``supported``:
    the highest both name, as ``negotiate`` picks it; ``VersionMismatchError`` when there is none."""
    offered = [part.strip() for part in value.split(",") if part.strip()]
    return negotiate(Hello(versions=offered), supported, ()).version or ""
