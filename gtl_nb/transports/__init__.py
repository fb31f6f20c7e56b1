"""Transports: thin asyncio loops that carry one ``GTLConnection`` over a byte stream.

* ``channel`` — the byte stream a transport hands over (``Channel``), and one over asyncio streams;
* ``framed`` — ``FramedConnection``: a connection on a channel, with ordered writes and awaited drains;
* ``conventions`` — what is sent on top of GTL v1.0 until the protocol says it (the provider list);
* ``link`` — the client's end of one connection: the hello exchange, the provider list, many sessions;
* ``remote`` — ``RemoteBackend``, the client's backend over any transport, reconnecting by itself;
* ``pipes``, ``process``, ``stdio`` — frames on standard input and output: the gateway's half, and
  the client's half that starts the gateway as a child process (``stdio://`` endpoints).

The session logic of the server lives in ``gtl_nb.gateway``; this package knows only connections.
Nothing is imported here, so each transport costs only what it uses.
"""
