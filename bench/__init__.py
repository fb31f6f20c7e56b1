"""Benchmarks of gtl_nb (docs/benchmarks.md). Run them with ``make bench`` (``python -m bench``).

Every benchmark measures its baseline in the same run and reports a ratio or a difference, because the
machines these run on are shared and noisy: absolute times are printed for context only.

* ``bench_codec`` — the GTL codec and frame decoder against the standard library's json.
* ``bench_overhead`` — the embedded client against bare httpx on the OpenAI simulator.
* ``bench_versions`` — this tree against an earlier commit (``python -m bench.bench_versions REV``).
* ``suite`` — the gateway of issue 13: ``upstream`` (the fake OpenAI upstream), ``gateway_setup`` (the
  gateway's configuration and token), ``servers`` (the processes), ``loadclient`` with ``paths`` and
  ``httpclient`` (the load client), ``procstat`` (CPU and memory from /proc), ``stats``, ``report``.
* ``engine_parts`` — the embedded engine's CPU at concurrency 20 taken apart: its parts in one
  coroutine, then its levels one by one, against the bare call.
* ``callgrind`` — instructions per request; ``profile_gateway`` — py-spy profiles; ``scale`` with
  ``scale_client`` — thousands of concurrent streams in one gateway.
"""
