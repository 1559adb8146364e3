"""wrk against enlace's web server and its peers, in one run: requests/s and ratios.

    python benchmarks/web.py            # 10 s a row
    python benchmarks/web.py --quick    # 3 s a row, a smoke run

Servers: ``enlace serve web`` (uvloop), ``python -m http.server``, uvicorn with
starlette's StaticFiles, aiohttp's static route, and nginx with one worker
(its own temporary prefix and config, not daemonized). Each serves the same
directory of files; rows are 1 KiB, 100 KiB and 10 MiB with keep-alive, and
1 KiB with ``Connection: close``. Every server runs pinned to core 0 and wrk
to core 1 (``taskset``), one server at a time, and is stopped by its PID.
Access logs are off everywhere (``--log-level warning`` for enlace): the
benchmark measures serving, not logging. Peers that cannot start (a missing
package: ``pip install 'enlace[bench]'``) are skipped with the reason.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from harness import PEERS
from harness.servers import free_port, last_line, pinning, port_open, start_polled, stop_server
from harness.tables import render

__all__ = ["main"]

NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
START_TIMEOUT = 20.0  # seconds for a server to accept connections


@dataclass(frozen=True)
class Row:
    """A table row: a file fetched over ``connections`` connections, kept alive or not."""

    name: str
    path: str
    connections: int
    close: bool = False


ROWS = (
    Row("1 KiB keep-alive", "/1k.bin", 50),
    Row("100 KiB keep-alive", "/100k.bin", 50),
    Row("10 MiB keep-alive", "/10m.bin", 8),
    Row("1 KiB Connection: close", "/1k.bin", 50, close=True),
)
FILES = {"1k.bin": 1024, "100k.bin": 100 * 1024, "10m.bin": 10 * 1024 * 1024}


def nginx_command(root: Path, port: int, prefix: Path) -> list[str]:
    """nginx serving ``root`` on ``port`` with one worker, its files under ``prefix``."""
    (prefix / "tmp").mkdir(parents=True, exist_ok=True)
    user = "user root;\n" if os.geteuid() == 0 else ""
    conf = f"""{user}daemon off;
worker_processes 1;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    sendfile on;
    tcp_nopush on;
    keepalive_requests 1000000;
    default_type application/octet-stream;
    client_body_temp_path {prefix}/tmp/body;
    proxy_temp_path {prefix}/tmp/proxy;
    fastcgi_temp_path {prefix}/tmp/fastcgi;
    uwsgi_temp_path {prefix}/tmp/uwsgi;
    scgi_temp_path {prefix}/tmp/scgi;
    server {{ listen 127.0.0.1:{port}; root {root}; }}
}}
"""
    (prefix / "nginx.conf").write_text(conf)
    return [
        NGINX,
        "-p",
        str(prefix),
        "-c",
        str(prefix / "nginx.conf"),
        "-e",
        str(prefix / "error.log"),
    ]


def servers(root: Path, prefix: Path) -> dict[str, tuple[Callable[[int], list[str]], bool]]:
    """name -> (its command line for a port, is a Python peer)."""
    python = sys.executable
    site = str(root)
    return {
        "enlace": (
            lambda port: [
                python,
                "-m",
                "enlace",
                "serve",
                "web",
                "--root",
                site,
                "--port",
                str(port),
                "--loop",
                "uvloop",
                "--log-level",
                "warning",
            ],
            False,
        ),
        "http.server": (
            lambda port: [
                python,
                "-m",
                "http.server",
                str(port),
                "--bind",
                "127.0.0.1",
                "--directory",
                site,
            ],
            True,
        ),
        "uvicorn+starlette": (
            lambda port: [python, str(PEERS / "web_starlette.py"), site, str(port)],
            True,
        ),
        "aiohttp": (lambda port: [python, str(PEERS / "web_aiohttp.py"), site, str(port)], True),
        "nginx": (lambda port: nginx_command(root, port, prefix), False),
    }


def run_wrk(pin: list[str], port: int, row: Row, seconds: float) -> tuple[float, str]:
    """wrk's requests/s for one row, and the errors it counted (empty when none)."""
    command = [*pin, "wrk", "-t1", f"-c{row.connections}", f"-d{seconds:g}s"]
    if row.close:
        command += ["-H", "Connection: close"]
    command.append(f"http://127.0.0.1:{port}{row.path}")
    result = subprocess.run(
        command, capture_output=True, text=True, timeout=seconds + 30, check=False
    )
    out = result.stdout
    match = re.search(r"Requests/sec:\s+([\d.]+)", out)
    problems = []
    if match is None:  # e.g. "unable to connect to ...": the row shows 0, this says why
        problems.append(
            f"wrk failed: {last_line(result.stderr) or f'exit code {result.returncode}'}"
        )
    for pattern in (r"Non-2xx or 3xx responses: (\d+)", r"Socket errors: (.*)"):
        if found := re.search(pattern, out):
            problems.append(found.group(0))
    return (float(match.group(1)) if match else 0.0), "; ".join(problems)


def main() -> int:
    """Run every server through the rows, one server at a time; print the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="3 s a row instead of 10")
    parser.add_argument("--seconds", type=float, help="seconds a row (overrides --quick)")
    parser.add_argument("--only", nargs="*", help="run only these servers")
    args = parser.parse_args()
    if args.seconds is not None and (args.seconds < 1 or not args.seconds.is_integer()):
        parser.error("--seconds takes a whole number of seconds, at least 1 (as wrk's -d does)")
    seconds = args.seconds or (3.0 if args.quick else 10.0)
    if shutil.which("wrk") is None:
        print("wrk is not installed (apt-get install wrk)", file=sys.stderr)
        return 1
    server_pin, wrk_pin, pinned = pinning("split", "wrk")
    results: dict[str, dict[str, float]] = {}
    python_peers: list[str] = []
    with tempfile.TemporaryDirectory(prefix="enlace-web-bench-") as tmp:
        root = Path(tmp) / "site"
        commands = servers(root, Path(tmp) / "nginx")
        if unknown := sorted(set(args.only or ()) - set(commands)):
            parser.error(f"unknown servers: {', '.join(unknown)} (known: {', '.join(commands)})")
        root.mkdir()
        for name, size in FILES.items():
            (root / name).write_bytes(os.urandom(size))
        os.chmod(tmp, 0o755)
        os.chmod(root, 0o755)
        for name, (command_for, is_python) in commands.items():
            if args.only and name not in args.only:
                continue
            port = free_port()
            command = command_for(port)
            # Its output goes to a file, not a pipe: http.server logs every request.
            started = start_polled(
                name,
                [*server_pin, *command],
                port,
                port_open,
                timeout=START_TIMEOUT,
                waiting_for="accept connections",
            )
            if isinstance(started, str):
                print(f"skipped {name}: {started}", file=sys.stderr)
                continue
            results[name] = {}
            if is_python:
                python_peers.append(name)
            try:
                for row in ROWS:
                    rate, problems = run_wrk(wrk_pin, port, row, seconds)
                    results[name][row.name] = rate
                    note = f"  ({problems})" if problems else ""
                    print(f"{name:>18}  {row.name:<24} {rate:>10.0f} req/s{note}", file=sys.stderr)
            finally:
                stop_server(started)
    print_table(results, python_peers, seconds, pinned)
    return 0


def print_table(
    results: dict[str, dict[str, float]], python_peers: list[str], seconds: float, pinned: str
) -> None:
    """requests/s of every server in every row, then enlace's ratios, as a Markdown table."""
    names = list(results)
    print(f"\nwrk, {seconds:g} s a row; {pinned}")
    rows = [["row", *names, "enlace / nginx", "enlace / best Python peer"]]
    for row in ROWS:
        rates = {name: results[name].get(row.name, 0.0) for name in names}
        enlace = rates.get("enlace", 0.0)
        nginx = rates.get("nginx", 0.0)
        peers = [rates[name] for name in python_peers if rates.get(name)]
        best = max(peers) if peers else 0.0
        to_nginx = f"{enlace / nginx:.2f}" if nginx and enlace else "-"
        to_best = f"{enlace / best:.2f}" if best and enlace else "-"
        rows.append([row.name, *(f"{rates[name]:,.0f}" for name in names), to_nginx, to_best])
    print(render(rows, markdown=True))


if __name__ == "__main__":
    sys.exit(main())
