"""``python tests/gateway/older_gateway.py FEATURES ARGS...``: the gateway (``python -m gtl_nb.gateway ARGS...``)
offering only FEATURES (comma-separated) in its hello and ``GTL-Features``, as a gateway built before the
others would — for the tests of the request extensions' negotiation over a real child process (stdio)."""

from __future__ import annotations

import dataclasses
import sys
from typing import Any


def main() -> int:
    from gtl_nb.gateway import main as gateway_main
    from gtl_nb.gateway.settings import GatewaySettings

    features = tuple(name for name in sys.argv[1].split(",") if name)
    read = GatewaySettings.from_settings.__func__  # type: ignore[attr-defined]

    def narrowed(cls: type[GatewaySettings], settings: Any) -> GatewaySettings:
        options = read(cls, settings)
        return dataclasses.replace(options, limits=dataclasses.replace(options.limits, features=features))

    GatewaySettings.from_settings = classmethod(narrowed)  # type: ignore[method-assign,assignment]
    return gateway_main.main(sys.argv[2:])


if __name__ == "__main__":
    sys.exit(main())
