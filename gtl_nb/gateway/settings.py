"""The gateway's own settings: the ``[gateway]`` table of the validated configuration, typed."""

from __future__ import annotations

from dataclasses import dataclass

from gtl_nb.engine.settings import Settings
from gtl_nb.protocol.codec import DEFAULT_MAX_FRAME_BYTES

__all__ = ["GatewaySettings"]


@dataclass(frozen=True)
class GatewaySettings:
    """What the gateway reads from ``[gateway]`` so far (the other keys belong to transports to come)."""

    auth: str = "none"
    max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES

    @classmethod
    def from_settings(cls, settings: Settings) -> GatewaySettings:
        table = settings.config.gateway if settings.config is not None else {}
        return cls(
            auth=str(table.get("auth") or "none"),
            max_frame_bytes=int(table.get("max_frame_bytes") or DEFAULT_MAX_FRAME_BYTES),
        )
