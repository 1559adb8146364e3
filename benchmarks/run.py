"""Run enlace's servers and their Python peers under the same load and print a table of ratios.

One command: ``python benchmarks/run.py`` (``--quick`` for a smoke run of about 20 s, ``--help``
for the options).  It compiles the C load generator (``loadgen/loadgen.c``) into ``.build/`` with
``cc -O2`` when needed, starts every server of the chosen suite as a subprocess (pinned to core 0
with ``taskset`` when possible) and waits for its ``listening on HOST:PORT`` line, then runs each
configuration against each server in turn with the load generator pinned to core 1, and finally
stops every server by its PID (SIGTERM, then SIGKILL after a timeout).  Servers that cannot run
(a missing library, a command that fails to start) are skipped with the reason.  The table goes
to stdout, progress to stderr, and every number to ``results/latest.json``.

Suites:

- ``echo`` (default): framed echo (4-byte big-endian length, then the payload; every frame comes
  back unchanged) on enlace's asyncio and threads runtimes and on asyncio streams, an
  ``asyncio.Protocol``, that Protocol on uvloop, ``socketserver.ThreadingTCPServer`` and
  Twisted's ``Int32StringReceiver`` (the peers live in ``peers/``).  Two of its rows run over
  TLS, on a second instance of each server started with a certificate made for the run
  (``enlace cert``), against ``.build/loadgen-tls`` (the load generator built with OpenSSL);
  the table then also shows each server's TLS cost (TLS requests/s over plain requests/s).
- ``roundtrip``: a text command round trip: each request is the frame ``/echo xxx...`` and its
  reply the one frame ``xxx...``, on enlace's message server (both runtimes) and on command
  servers built on the same five peer libraries (the peers' ``--commands`` mode: the frame
  decoded as UTF-8, the command name split off and looked up in a table, the result framed).

To add a server, add a ``Server`` to a suite's ``servers``; to add a suite, add a ``Suite`` to
``SUITES`` (both in ``harness/suites.py``; the harness package beside this file has the rest:
starting and stopping servers, the load generator, the tables).  Only 127.0.0.1 (or another
loopback address a server reports) is ever connected to.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import time
from pathlib import Path

from harness import RESULTS
from harness import servers as procs
from harness.plan import Plan, run_plan
from harness.servers import busy_before_run, missing_modules
from harness.suites import CONFIGS, SUITES, Suite
from harness.tables import (
    compute_ratios,
    compute_tls_cost,
    format_loadgen_cpu,
    format_notes,
    format_round_ratios,
    format_tables,
    round_ratios,
)

__all__ = ["main", "parse_args"]

DEFAULT_OUTPUT = RESULTS / "latest.json"


def _plain_keys(suite: Suite) -> set[str]:
    """The plain rows the suite's TLS rows are compared with."""
    return {c.plain for c in suite.configs if c.tls}


def _select(names: str | None, known: list[str], what: str) -> list[str]:
    if not names:
        return known
    chosen = [name.strip() for name in names.split(",") if name.strip()]
    unknown = [name for name in chosen if name not in known]
    if unknown:
        sys.exit(f"error: unknown {what}: {', '.join(unknown)} (known: {', '.join(known)})")
    return [name for name in known if name in chosen]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(
        prog="python benchmarks/run.py",
        description="Benchmark enlace's servers against their Python peers; print ratios.",
        epilog="Suites: "
        + "; ".join(f"{s.name}: {s.description}" for s in SUITES.values())
        + ". Configurations: "
        + ", ".join(f"{c.key} = {c.label}" for c in CONFIGS)
        + ".",
    )
    parser.add_argument("--suite", choices=sorted(SUITES), default="echo", help="default: echo")
    parser.add_argument("--quick", action="store_true", help="short smoke run (about 20 s)")
    parser.add_argument("--servers", metavar="A,B", help="only these servers (see --list)")
    rows = parser.add_mutually_exclusive_group()
    rows.add_argument("--configs", metavar="X,Y", help="only these configurations")
    rows.add_argument(
        "--tls",
        action="store_true",
        help="only the TLS rows and the plain rows they are compared with (their TLS cost)",
    )
    rows.add_argument("--tls-only", action="store_true", help="only the TLS rows")
    parser.add_argument("--duration", type=float, help="measured seconds per cell (default 5)")
    parser.add_argument("--warmup", type=float, help="unmeasured seconds per cell (default 1)")
    parser.add_argument(
        "--repeat",
        type=int,
        default=1,
        metavar="N",
        help="run every cell N times, interleaved, and keep the median (default 1)",
    )
    parser.add_argument(
        "--retry-stolen",
        type=int,
        default=2,
        metavar="N",
        help="run a cell again, at most N times, when the hypervisor took more than "
        "2%% of the machine during it (default 2; 0: never)",
    )
    parser.add_argument(
        "--pin",
        choices=("split", "same", "none"),
        default="split",
        help="split: server on one core, load generator on another (default); "
        "same: both on one core; none: no taskset",
    )
    parser.add_argument(
        "--output",
        type=Path,
        default=DEFAULT_OUTPUT,
        help="where to write the JSON results (default: benchmarks/results/latest.json)",
    )
    parser.add_argument("--list", action="store_true", help="list servers and configurations")
    args = parser.parse_args(argv)
    quick = args.quick
    if args.duration is None:
        args.duration = 0.3 if quick else 5.0
    if args.warmup is None:
        args.warmup = 0.2 if quick else 1.0
    if args.duration <= 0 or args.warmup < 0 or args.repeat < 1 or args.retry_stolen < 0:
        parser.error(
            "--duration and --repeat must be positive, --warmup and --retry-stolen not negative"
        )
    return args


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; return the exit status: 1 when a cell failed, else 0 (skips are fine)."""
    args = parse_args(argv)
    suite = SUITES[args.suite]
    if args.list:
        for s in SUITES.values():
            print(f"suite {s.name}: {s.description}")
            for server in s.servers:
                print(f"  {server.name:17} python {' '.join(server.args)}")
            for config in s.configs:
                print(f"  {config.key:17} {config.label}")
        return 0
    server_names = _select(args.servers, [s.name for s in suite.servers], "servers")
    known = [c.key for c in suite.configs]
    tls_keys = [c.key for c in suite.configs if c.tls]
    if (args.tls or args.tls_only) and not tls_keys:
        sys.exit(f"error: suite {suite.name} has no TLS rows (the echo suite has)")
    if args.tls_only:
        config_keys = tls_keys
    elif args.tls:
        config_keys = [c.key for c in suite.configs if c.tls or c.key in _plain_keys(suite)]
    else:
        config_keys = _select(args.configs, known, "configurations")
    servers = [s for s in suite.servers if s.name in server_names]
    configs = [c for c in suite.configs if c.key in config_keys]
    pin_server, pin_loadgen, pinning = procs.pinning(args.pin)
    print(f"suite {suite.name}: {suite.description}; {pinning}", file=sys.stderr)
    missing = sorted({m for s in servers for m in missing_modules(s)})
    if missing:
        print(f"missing: {' '.join(missing)} (pip install {' '.join(missing)})", file=sys.stderr)

    busy = busy_before_run(", or use --repeat")
    speedups = procs.speedups_state()
    if speedups != "on":
        print(f"warning: enlace's C speedups are {speedups}", file=sys.stderr)
    started = time.monotonic()
    plan = Plan(
        suite,
        servers,
        configs,
        args.duration,
        args.warmup,
        args.repeat,
        pin_server,
        pin_loadgen,
        retry_stolen=args.retry_stolen,
    )
    results, skipped = run_plan(plan)
    ratios = compute_ratios(suite, configs, results)
    elapsed = time.monotonic() - started

    print()
    print(
        f"enlace benchmarks, suite {suite.name}: {suite.description}. {args.duration:g} s per "
        f"cell after {args.warmup:g} s warmup"
        + (f", median of {args.repeat} interleaved runs" if args.repeat > 1 else "")
        + f"; {pinning}; Python {platform.python_version()}; enlace.speedups {speedups}."
    )
    print()
    if results:
        print(format_tables(suite, configs, results, ratios))
    else:
        print("no server could run")
    rounds = round_ratios(suite, configs, results)
    spread = format_round_ratios(configs, rounds) if args.repeat > 1 else ""
    if spread:
        print()
        print(spread)
    cpu = format_loadgen_cpu(configs, results)
    if cpu:
        print()
        print(cpu)
    notes = format_notes(configs, results, skipped)
    if notes:
        print()
        print(notes)

    report = {
        "suite": suite.name,
        "description": suite.description,
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "python": sys.version,
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "speedups": speedups,
        "pinning": pinning,
        "duration": args.duration,
        "warmup": args.warmup,
        "repeat": args.repeat,
        "retry_stolen": args.retry_stolen,
        "elapsed": round(elapsed, 1),
        "busy_before": None if busy is None else round(busy, 3),
        "configs": {c.key: c.__dict__ for c in configs},
        "servers": results,
        "skipped": skipped,
        "ratios": ratios,
        "round_ratios": rounds,
        "tls_cost": compute_tls_cost(configs, results),
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\n{len(results)} servers, {elapsed:.0f} s; results in {args.output}")
    failed = any(not cell.get("ok") for r in results.values() for cell in r["cells"].values())
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
