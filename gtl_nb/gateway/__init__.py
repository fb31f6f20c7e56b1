"""The gateway: GTL served to remote clients, every session run by one shared engine.

* ``sessions`` — ``GatewayConnection``: one client connection's sessions over ``Engine.stream``;
* ``stdio`` — ``serve_stdio``: one connection on standard input and output;
* ``devauth`` — development authentication: none, or one static token (``[gateway] auth``);
* ``main`` / ``__main__`` — ``python -m gtl_nb.gateway --stdio --config FILE``; ``cli`` — ``gtl serve``.
"""

from gtl_nb.gateway.devauth import DevAuth
from gtl_nb.gateway.sessions import GatewayConnection
from gtl_nb.gateway.stdio import serve_stdio

__all__ = ["DevAuth", "GatewayConnection", "serve_stdio"]
