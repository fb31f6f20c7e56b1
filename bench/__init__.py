"""Benchmarks of gtl_nb. Run them all with ``make bench`` (``python -m bench``).

Every benchmark measures its baseline in the same run and reports a ratio, because the machines
these run on are shared and noisy: absolute times are printed for context only.
"""
