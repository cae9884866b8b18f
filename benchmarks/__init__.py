"""Benchmarks for the ARE sidecar, run with ``python -m benchmarks``.

Each public module in this package is a *suite* (``rpc``, later ``scheduler``,
``state``, ``cache``, ``router``, ``trace``). A suite names a baseline and its
contenders; every contender runs its client loop in a fresh process and its
servers in processes of their own, and results are printed as median and p99
latency with ratios against the baseline measured in the same run.

See ``benchmarks/README.md`` for how to run them and read the ratios, and
``benchmarks/_harness.py`` for how to add a suite or a contender.
"""
