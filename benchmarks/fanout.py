"""Fan-out: one room, many receivers; enlace's chat against Redis pub/sub doing the same job.

One command: ``python benchmarks/fanout.py`` (``--quick`` for a smoke run of about 30 s,
``--help`` for the options).  N receivers (default 1000) join one room (the chat's ``general``,
a Redis channel), a few senders publish to it at a fixed total rate for a fixed time, and the
C client ``loadgen/fanout.c`` (compiled into ``.build/`` with ``cc -O2`` when needed; one epoll
loop for every sender and receiver) measures the deliveries per second summed over all
receivers, the latency of each delivery (the send time travels in the message text, the receive
time comes from the same CLOCK_MONOTONIC), and the deliveries lost: every receiver must get
every message of every sender, in order (per-sender sequence numbers).

Two loads, each with its own fresh server (a chat replays its room's history to newcomers):

- ``steady``: a rate every server here keeps up with (default 100 messages/s, so 100k
  deliveries/s): compares latency, and shows the CPU share each server needs for it;
- ``burst``: a fixed number of messages (default 3000) sent faster than any server fans them
  out (default 20000/s): the deliveries per second are then each server's capacity.

Rows: enlace's chat on the asyncio runtime (on uvloop when it is installed), the same chat on
the threads runtime (a thread per connection), the asyncio chat with its rooms shared through a
Redis hub (``enlace-redis-hub``, with a ``redis-server`` of its own), all started by
``chat_server.py`` with flood control off, and Redis pub/sub (a ``redis-server`` of our own on
a free port, no persistence).
Servers run on one core and the client on another (``taskset``); every server is stopped by its
PID.  The table goes to stdout, progress to stderr, every number to ``results/fanout.json``.
Only 127.0.0.1 is connected to.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness import BENCHMARKS, BUILD, RESULTS
from harness.fanout_tables import (
    ANCHOR,
    cell_summary,
    compute_ratios,
    format_notes,
    format_table,
    good,
    lost_of,
    repeat_notes,
)
from harness.loadgen import build_c_program, run_json_program
from harness.servers import (
    BUSY,
    RunningServer,
    Server,
    busy_before_run,
    free_port,
    pinning,
    raise_open_files,
    start_polled,
    start_server,
    stop_server,
)
from harness.tables import median_run

__all__ = ["main"]

CLIENT_SRC = BENCHMARKS / "loadgen" / "fanout.c"
CLIENT = BUILD / "fanout"
DEFAULT_OUTPUT = RESULTS / "fanout.json"
CHAT_SERVER = BENCHMARKS / "chat_server.py"

REDIS_START_TIMEOUT = 10.0  # seconds for redis-server to answer PING
CLIENT_SLACK = 20.0  # seconds allowed beyond the client's own time bounds


@dataclass(frozen=True)
class Load:
    """One load: a group of table rows."""

    key: str
    label: str
    rate: float  # messages per second, all senders together
    count: int  # messages to send
    duration: float  # longest sending time


@dataclass(frozen=True)
class Target:
    """A server under test: a table row within each load."""

    name: str
    kind: str  # "chat" (python benchmarks/chat_server.py ...) or "redis"
    runtime: str = ""  # for chat: asyncio or threads


TARGETS = (
    Target("enlace-asyncio", "chat", "asyncio"),
    Target("enlace-threads", "chat", "threads"),
    # The same chat server, its rooms shared through a Redis hub (a redis-server of its own).
    Target("enlace-redis-hub", "chat-hub", "asyncio"),
    Target("redis", "redis"),
)


# ---- the client ----


def build_client() -> Path:
    """Compile ``fanout.c`` into ``.build/fanout`` unless it is up to date; return its path."""
    return build_c_program(CLIENT_SRC, CLIENT, "the fan-out client")


def run_client(
    client: Path,
    pin: list[str],
    protocol: str,
    port: int,
    server_pid: int,
    load: Load,
    args: argparse.Namespace,
    receivers: int,
) -> dict[str, Any]:
    """Run one measurement; return the client's JSON, or ``ok: false`` and an error."""
    cmd = [
        *pin,
        str(client),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--protocol",
        protocol,
        "--receivers",
        str(receivers),
        "--senders",
        str(args.senders),
        "--rate",
        f"{load.rate:g}",
        "--count",
        str(load.count),
        "--duration",
        f"{load.duration:g}",
        "--size",
        str(args.size),
        "--setup-timeout",
        f"{args.setup_timeout:g}",
        "--drain-timeout",
        f"{args.drain_timeout:g}",
        "--watch-pid",
        str(server_pid),
    ]
    bound = args.setup_timeout + load.duration + args.drain_timeout + CLIENT_SLACK
    return run_json_program(cmd, bound, "the client", stderr_lines=8)


# ---- servers ----


def _redis_ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


def start_redis(pin: list[str], max_clients: int) -> RunningServer | str:
    """Start our own redis-server on a free port, no persistence; return it or why not."""
    exe = shutil.which("redis-server")
    if exe is None:
        return "redis-server is not installed (apt-get install -y redis-server)"
    port = free_port()
    cmd = [
        *pin,
        exe,
        "--port",
        str(port),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
        "--maxclients",
        str(max_clients),
        "--protected-mode",
        "yes",
        "--daemonize",
        "no",
    ]
    return start_polled(
        ANCHOR,
        cmd,
        port,
        _redis_ping,
        timeout=REDIS_START_TIMEOUT,
        waiting_for="answer PING",
    )


def start_target(
    target: Target, pin: list[str], max_connections: int, hub_port: int | None = None
) -> RunningServer | str:
    """Start a server for one cell (for the hub row, the chat server; its Redis is separate)."""
    if target.kind == "redis":
        return start_redis(pin, max_connections)
    args: tuple[str, ...] = (
        str(CHAT_SERVER),
        "--port",
        "0",
        "--runtime",
        target.runtime,
        "--max-connections",
        str(max_connections),
    )
    if hub_port is not None:
        args = (*args, "--hub", f"redis://127.0.0.1:{hub_port}/0")
    return start_server(Server(target.name, args, "enlace"), pin)


def redis_version() -> str | None:
    exe = shutil.which("redis-server")
    if exe is None:
        return None
    try:
        done = subprocess.run(
            [exe, "--version"], capture_output=True, text=True, timeout=10, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    words = [w for w in done.stdout.split() if w.startswith("v=")]
    return words[0][2:] if words else done.stdout.strip()[:60]


def uvloop_installed() -> bool:
    try:
        import uvloop  # noqa: F401, PLC0415 - only asking whether it is there
    except ImportError:
        return False
    return True


# ---- the run ----


def run_cell(
    target: Target,
    load: Load,
    args: argparse.Namespace,
    client: Path,
    pins: tuple[list[str], list[str]],
) -> dict[str, Any]:
    """Start a fresh server, run the client against it, stop the server by its PID."""
    receivers = args.threads_receivers if target.runtime == "threads" else args.receivers
    max_connections = receivers + args.senders + 64
    hub: RunningServer | None = None
    try:  # the hub's Redis is stopped however the cell ends, a Ctrl-C included
        if target.kind == "chat-hub":
            made = start_redis(pins[0], 256)
            if isinstance(made, str):
                return {"ok": False, "error": made, "skipped": True}
            hub = made
        started = start_target(
            target, pins[0], max_connections, hub_port=None if hub is None else hub.port
        )
        if isinstance(started, str):
            return {"ok": False, "error": started, "skipped": True}
        try:
            protocol = "redis" if target.kind == "redis" else "chat"
            result = run_client(
                client, pins[1], protocol, started.port, started.proc.pid, load, args, receivers
            )
            if not result.get("ok") and (failure := started.failure()):
                result["error"] = f"{result.get('error')} ({failure})"
        finally:
            result_stop = stop_server(started)
    finally:
        if hub is not None:
            stop_server(hub)
    result["server_stop"] = result_stop
    result["command"] = list(started.server.args)
    return result


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python benchmarks/fanout.py",
        description="Fan-out to N receivers in one room: enlace's chat (both runtimes) against "
        "Redis pub/sub; deliveries/s, latency from send to delivery, lost deliveries.",
        epilog="Loads: steady = --rate messages/s for --duration s; burst = --burst-count "
        "messages at --burst-rate/s (faster than the servers fan out: measures capacity).",
    )
    parser.add_argument("--quick", action="store_true", help="short smoke run (about 30 s)")
    parser.add_argument(
        "--receivers", type=int, default=1000, metavar="N", help="receivers (default 1000)"
    )
    parser.add_argument(
        "--threads-receivers",
        type=int,
        metavar="N",
        help="receivers for enlace-threads (a thread each; default: --receivers; the server "
        "is started with --max-connections N + senders + 64, above its default cap of 256)",
    )
    parser.add_argument("--senders", type=int, default=4, metavar="N", help="senders (default 4)")
    parser.add_argument(
        "--size", type=int, default=64, metavar="BYTES", help="message text size (default 64)"
    )
    parser.add_argument(
        "--rate", type=float, default=100.0, help="steady load: messages/s (default 100)"
    )
    parser.add_argument(
        "--duration", type=float, help="steady load: seconds of sending (default 5; quick 1)"
    )
    parser.add_argument(
        "--burst-count",
        type=int,
        metavar="N",
        help="burst load: messages (default 3000; quick 1000)",
    )
    parser.add_argument(
        "--burst-rate", type=float, default=20000.0, help="burst load: messages/s (default 20000)"
    )
    parser.add_argument(
        "--loads", default="steady,burst", metavar="A,B", help="steady, burst (default both)"
    )
    parser.add_argument(
        "--servers",
        default=",".join(t.name for t in TARGETS),
        metavar="A,B",
        help="default: " + ",".join(t.name for t in TARGETS),
    )
    parser.add_argument(
        "--setup-timeout",
        type=float,
        default=60.0,
        help="seconds to connect, greet and sync every client (default 60)",
    )
    parser.add_argument(
        "--drain-timeout",
        type=float,
        default=60.0,
        help="seconds after the last send to wait for deliveries (default 60)",
    )
    parser.add_argument(
        "--repeat",
        type=int,
        default=1,
        metavar="N",
        help="run every cell N times, interleaved, and keep the median run (default 1)",
    )
    parser.add_argument(
        "--pin",
        choices=("split", "same", "none"),
        default="split",
        help="split: server on one core, client on another (default); same: one core; none",
    )
    parser.add_argument(
        "--output", type=Path, default=DEFAULT_OUTPUT, help="JSON results (default: %(default)s)"
    )
    args = parser.parse_args(argv)
    if args.duration is None:
        args.duration = 1.0 if args.quick else 5.0
    if args.burst_count is None:
        args.burst_count = 1000 if args.quick else 3000
    if args.threads_receivers is None:
        args.threads_receivers = args.receivers
    positive = (
        args.receivers,
        args.threads_receivers,
        args.senders,
        args.rate,
        args.duration,
        args.burst_count,
        args.burst_rate,
        args.setup_timeout,
        args.drain_timeout,
        args.repeat,
    )
    if min(positive) <= 0 or args.size < 0 or args.size > 16384:
        parser.error("counts, rates and times must be positive; --size 0..16384")
    if max(args.receivers, args.threads_receivers) > 50000 or args.senders > 1000:
        parser.error("at most 50000 receivers and 1000 senders")
    args.load_keys = _select(parser, args.loads, ["steady", "burst"], "loads")
    args.server_names = _select(parser, args.servers, [t.name for t in TARGETS], "servers")
    return args


def _select(parser: argparse.ArgumentParser, names: str, known: list[str], what: str) -> list[str]:
    chosen = [name.strip() for name in names.split(",") if name.strip()]
    unknown = [name for name in chosen if name not in known]
    if unknown or not chosen:
        parser.error(f"unknown or no {what}: {', '.join(unknown)} (known: {', '.join(known)})")
    return [name for name in known if name in chosen]


def make_loads(args: argparse.Namespace) -> list[Load]:
    steady_count = max(1, int(args.rate * args.duration))
    burst_time = args.burst_count / args.burst_rate
    loads = {
        "steady": Load(
            "steady",
            f"steady: {args.rate:g} msg/s for {args.duration:g} s",
            args.rate,
            steady_count,
            args.duration,
        ),
        "burst": Load(
            "burst",
            f"burst: {args.burst_count} msg at {args.burst_rate:g}/s",
            args.burst_rate,
            args.burst_count,
            burst_time + 1.0,  # the count ends it; the time only bounds it
        ),
    }
    return [loads[key] for key in args.load_keys]


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; exit status 1 when a cell failed or lost deliveries, else 0."""
    args = parse_args(argv)
    loads = make_loads(args)
    targets = [t for t in TARGETS if t.name in args.server_names]
    client = build_client()
    biggest = max(args.receivers, args.threads_receivers) + args.senders
    _, files = raise_open_files(2 * biggest + 256)
    pin_server, pin_client, pinned = pinning(args.pin, "client")
    loop = "uvloop" if uvloop_installed() else "asyncio (uvloop is not installed)"
    print(f"fan-out: {pinned}; {files}; asyncio loop: {loop}", file=sys.stderr)
    busy = busy_before_run()
    started = time.monotonic()
    runs: dict[str, dict[str, list[dict[str, Any]]]] = {
        load.key: {target.name: [] for target in targets} for load in loads
    }
    skipped: set[str] = set()
    for round_ in range(args.repeat):
        order = targets[round_ % len(targets) :] + targets[: round_ % len(targets)]
        for load in loads:
            for target in order:
                if target.name in skipped:
                    continue
                print(f"{load.label}: {target.name} ...", file=sys.stderr)
                cell = run_cell(target, load, args, client, (pin_server, pin_client))
                runs[load.key][target.name].append(cell)
                if cell.get("skipped"):
                    skipped.add(target.name)
                print(f"  {cell_summary(cell)}", file=sys.stderr)
    results = {
        load.key: {
            target.name: median_run(
                runs[load.key][target.name],
                key=lambda c: (c["delivered_per_s"], -c["p99_us"]),
                good=good,
            )
            for target in targets
            if runs[load.key][target.name]
        }
        for load in loads
    }
    elapsed = time.monotonic() - started
    ratios = compute_ratios(loads, results)

    version = redis_version()
    print()
    print(
        f"enlace fan-out: {args.receivers} receivers in one room, {args.senders} senders, "
        f"{args.size}-byte messages; {pinned}; Python {platform.python_version()}, "
        f"asyncio loop {loop.split(maxsplit=1)[0]}, redis {version or 'missing'}."
    )
    print()
    print(format_table(loads, results, ratios))
    notes = format_notes(loads, results, args.receivers, args.threads_receivers)
    notes += repeat_notes(loads, runs)
    if busy is not None and busy > BUSY:
        notes.append(
            f"warning: the machine was {busy:.0%} busy before the run (other processes): the "
            "numbers are noisy; use --repeat 3 on an idle machine for numbers to quote"
        )
    if notes:
        print()
        print("\n".join(notes))

    report = {
        "benchmark": "fanout",
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "python": sys.version,
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "pinning": pinned,
        "open_files": files,
        "asyncio_loop": loop,
        "redis": version,
        "receivers": args.receivers,
        "threads_receivers": args.threads_receivers,
        "senders": args.senders,
        "size": args.size,
        "repeat": args.repeat,
        "elapsed": round(elapsed, 1),
        "busy_before": None if busy is None else round(busy, 3),
        "loads": {load.key: load.__dict__ for load in loads},
        "results": results,
        "ratios": ratios,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    done = sum(len(r) for by_target in runs.values() for r in by_target.values())
    print(f"\n{done} runs, {elapsed:.0f} s; results in {args.output}")
    failed = any(  # every run counts, not only the median ones shown
        (not cell.get("ok") and not cell.get("skipped")) or (cell.get("ok") and lost_of(cell))
        for by_target in runs.values()
        for cells in by_target.values()
        for cell in cells
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
