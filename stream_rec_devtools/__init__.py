"""Tooling around stream-rec, outside the serving package: drive a real worker from the outside
(``harness``), the benchmark scenarios (``bench``, ``bench_live``), the prequential replay (``replay``,
``prequential``), the temporal replay of benchmarks/temporal.py (``temporal``: the split at T, held-list
scoring, cadences; ``temporal_systems``: the systems over the serving code; ``time_worlds``: synthetic
worlds with sessions over days, drift and arrivals), fault injection (``faults``), ``/proc`` readings
(``procfs``), the demo model (``demo_model``) and the closed-loop simulation of new items (``closedloop``,
docs/EXPLORATION.md).

The serving layers of ``stream_rec`` never import this package (an import-linter contract in
pyproject.toml); the user-facing commands ``stream-rec demo``, ``bench`` and ``replay`` do, which is why
it ships in the same distribution (DEVELOPERS.md).
"""
