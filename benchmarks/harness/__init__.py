"""The benchmarks' shared harness: what runs, how it is started and stopped, how it is measured.

``run.py``, ``fanout.py`` and ``web.py`` (beside this package, which is importable as
``harness`` when one of them runs) share it:

- ``harness.servers``: start a server and wait for it (its ``listening on`` line, or a
  probe of its port), stop it by its PID; pinning with ``taskset``; how busy the machine is;
- ``harness.loadgen``: build the C programs in ``loadgen/`` and run one measurement;
- ``harness.suites``: ``run.py``'s servers, configurations and suites;
- ``harness.plan``: ``run.py``'s run: every server up, the cells interleaved;
- ``harness.tables``: numbers as text, ratios, the tables and the notes under them.
- ``harness.fanout_tables``: ``fanout.py``'s ratios to Redis, its table and notes.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["BENCHMARKS", "BUILD", "PEERS", "REPO", "RESULTS"]

BENCHMARKS = Path(__file__).resolve().parent.parent
REPO = BENCHMARKS.parent
PEERS = BENCHMARKS / "peers"
BUILD = BENCHMARKS / ".build"  # the compiled C programs (ignored by git)
RESULTS = BENCHMARKS / "results"
