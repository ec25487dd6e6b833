"""Closed-loop simulation of new items on the synthetic worlds (issue 21): simulated users answer the lists
they are shown; policies for the new items compared against an oracle that knows each item's appeal.

``world``: the simulated world and users · ``sources``: where a user's list comes from (the offline
serving path with a new-item policy; a real worker's emitted records in phase 2) · ``loop``: the
simulation and its metrics. ``benchmarks/closed_loop.py`` is the command."""
