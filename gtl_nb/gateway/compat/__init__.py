"""OpenAI- and Anthropic-compatible endpoints on the gateway's HTTP listener, so existing code works unchanged.

The official SDKs, pointed at the gateway with a GhostToken as their API key, reach every deployment
behind it — whatever format that provider speaks — because each request becomes one ordinary GTL
session of the listener: the same authentication, routing, budgets, ledger row, disconnect handling
and shutdown as ``POST /v1/gtl``. These encoders are the gateway's own; they share nothing with the
simulators in ``gtl_nb.sim``, which stay independent witnesses of the formats.

====================================  =====================================================================
``POST /v1/chat/completions``         OpenAI Chat Completions, streamed or not (``openai``)
``POST /v1/responses``                OpenAI Responses API, streamed or not (``openai``; ``responses_*``);
                                      ``/v1/responses/…`` is a ``404``: the gateway stores no responses
``POST /v1/messages``                 Anthropic Messages, streamed or not (``anthropic``)
``GET /v1/models[/{id}]``             the gateway's models, in whichever SDK's shape asks (``models``)
``/v1/embeddings``,                   ``404`` in OpenAI's error shape: GTL has no message for them
``/v1/completions``
``POST /v1/messages/count_tokens``    a request's input tokens (``anthropic``; ``Engine.count_tokens``)
``/v1/messages/…``                    ``404`` in Anthropic's error shape (batches)
====================================  =====================================================================

Modules: ``routes`` (``compat_routes``, registered by ``gateway.http.build_app``), ``intake`` (key
and body), ``fields`` (typed reading of a foreign body), ``runner`` (running one session, collected
or streamed), ``reply``, and per format a ``*_request`` (body → ``CompletionRequest``), a
``*_response`` (events → the format's answer) and the endpoint module with its error table (the
Responses API's ``responses_request`` and ``responses_response`` answer in ``openai``'s).
"""

from __future__ import annotations

from gtl_nb.gateway.compat.routes import compat_routes

__all__ = ["compat_routes"]
