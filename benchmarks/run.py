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
``SUITES``.  Only 127.0.0.1 (or another loopback address a server reports) is ever connected to.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import datetime
import importlib.util
import ipaddress
import json
import os
import platform
import queue
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Literal

__all__ = [
    "CONFIGS",
    "SUITES",
    "Config",
    "Plan",
    "Ratio",
    "RunningServer",
    "Server",
    "Suite",
    "build_loadgen",
    "build_loadgen_tls",
    "compute_tls_cost",
    "machine_busy",
    "main",
    "make_tls_files",
    "run_loadgen",
    "run_plan",
    "start_server",
    "stop_server",
]

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
PEERS = HERE / "peers"
BUILD = HERE / ".build"
LOADGEN_SRC = HERE / "loadgen" / "loadgen.c"
LOADGEN = BUILD / "loadgen"
LOADGEN_TLS = BUILD / "loadgen-tls"
DEFAULT_OUTPUT = HERE / "results" / "latest.json"

START_TIMEOUT = 20.0  # seconds for a server to print its "listening on" line
STOP_TIMEOUT = 5.0  # seconds between SIGTERM and SIGKILL
LOADGEN_SLACK = 15.0  # seconds allowed beyond the load generator's own time bound
ERROR_COUNTS = ("connect_failures", "conn_errors", "mismatches", "unexpected_frames")
LISTENING = re.compile(r"listening on (\[[^\]]+\]|[^\s:\[\]]+):(\d+)")
TLS_SERVER_NAME = "localhost"  # the name the TLS load generator verifies
LOADGEN_BUSY = 0.85  # a load generator using more of its core may be the bottleneck


@dataclass(frozen=True)
class Server:
    """A server under test: a name (a table column) and the arguments after ``python``."""

    name: str
    args: tuple[str, ...]
    kind: str  # "enlace" or "peer"
    modules: tuple[str, ...] = ()  # modules it needs; it is skipped when one is missing
    install: str = ""  # how to get them, shown when skipped
    # Arguments added to serve TLS, with "{cert}" and "{key}" for the PEM files; None: no TLS.
    tls_args: tuple[str, ...] | None = None
    tls_modules: tuple[str, ...] = ()  # modules it needs for TLS besides ``modules``
    tls_install: str = ""


@dataclass(frozen=True)
class Config:
    """One load configuration: a table row."""

    key: str  # for --configs
    label: str
    size: int  # payload bytes of each request
    connections: int
    depth: int = 1  # requests in flight per connection
    latency: bool = False  # show p50/p99 in the cell
    tls: bool = False  # over TLS: the servers' TLS instances, the TLS load generator
    plain: str = ""  # for a TLS row: the key of the same load in plain TCP (its TLS cost)


@dataclass(frozen=True)
class Ratio:
    """A ratio column: the numerator's requests/s over the best of the denominators'."""

    label: str
    numerator: str
    denominators: tuple[str, ...]


@dataclass(frozen=True)
class Suite:
    """A set of servers doing the same job, the configurations to run and the ratios to show."""

    name: str
    description: str
    servers: tuple[Server, ...]
    configs: tuple[Config, ...]
    ratios: tuple[Ratio, ...] = ()
    prefix: str = ""  # each payload starts with this text, then 'x' filler
    # How replies are checked: "payload" (each reply equals the request payload),
    # "after-prefix" (it equals the payload after the prefix, as /echo answers) or "none".
    verify: Literal["payload", "after-prefix", "none"] = "payload"
    settle: float = 0.0  # seconds to discard greetings after a connection's first request


TLS_ARGS = ("--tls-cert", "{cert}", "--tls-key", "{key}")


def _enlace(*args: str) -> tuple[str, ...]:
    return ("-m", "enlace", "serve", *args)


def _peer(script: str, *args: str) -> tuple[str, ...]:
    return (str(PEERS / script), "--port", "0", *args)


def _peers(*args: str) -> tuple[Server, ...]:
    """The five Python peers, each started with ``args`` after ``--port 0``."""
    return (
        Server("asyncio-streams", _peer("asyncio_streams.py", *args), "peer", tls_args=TLS_ARGS),
        Server("asyncio-protocol", _peer("asyncio_protocol.py", *args), "peer", tls_args=TLS_ARGS),
        Server(
            "uvloop",
            _peer("uvloop_protocol.py", *args),
            "peer",
            ("uvloop",),
            "pip install uvloop",
            tls_args=TLS_ARGS,
        ),
        Server("socketserver", _peer("socketserver_threads.py", *args), "peer", tls_args=TLS_ARGS),
        Server(
            "twisted",
            _peer("twisted_int32.py", *args),
            "peer",
            ("twisted",),
            "pip install twisted",
            tls_args=TLS_ARGS,
            # Twisted's TLS is pyOpenSSL's; service_identity is imported with it.
            tls_modules=("OpenSSL", "service_identity"),
            tls_install="pip install pyopenssl service_identity",
        ),
    )


CONFIGS: tuple[Config, ...] = (
    Config("small", "64 B x 50 conns", 64, 50),
    Config("small-tls", "64 B x 50 conns (TLS)", 64, 50, tls=True, plain="small"),
    Config("pipelined", "64 B x 100 conns, 8 in flight", 64, 100, depth=8),
    Config("large", "64 KiB x 10 conns", 64 * 1024, 10),
    Config("large-tls", "64 KiB x 10 conns (TLS)", 64 * 1024, 10, tls=True, plain="large"),
    Config("latency", "64 B x 1 conn", 64, 1, latency=True),
)

PYTHON_PEERS = ("asyncio-streams", "asyncio-protocol", "uvloop", "socketserver", "twisted")
RATIOS = (
    Ratio("enlace-asyncio / best peer", "enlace-asyncio", PYTHON_PEERS),
    Ratio("enlace-threads / socketserver", "enlace-threads", ("socketserver",)),
)

SUITES: dict[str, Suite] = {
    suite.name: suite
    for suite in (
        Suite(
            name="echo",
            description="framed echo: every frame comes back unchanged",
            servers=(
                Server(
                    "enlace-asyncio",
                    _enlace("echo", "--framed", "--port", "0", "--runtime", "asyncio"),
                    "enlace",
                    tls_args=TLS_ARGS,
                ),
                Server(
                    "enlace-threads",
                    _enlace("echo", "--framed", "--port", "0", "--runtime", "threads"),
                    "enlace",
                    tls_args=TLS_ARGS,
                ),
                *_peers(),
            ),
            configs=CONFIGS,
            ratios=RATIOS,
        ),
        Suite(
            name="roundtrip",
            description="text command round trip: '/echo xxx...' -> the frame 'xxx...'",
            servers=(
                Server(
                    "enlace-asyncio",
                    _enlace("chat", "--port", "0", "--runtime", "asyncio"),
                    "enlace",
                ),
                Server(
                    "enlace-threads",
                    _enlace("chat", "--port", "0", "--runtime", "threads"),
                    "enlace",
                ),
                *_peers("--commands"),
            ),
            configs=tuple(c for c in CONFIGS if c.key in ("small", "pipelined", "latency")),
            ratios=RATIOS,
            prefix="/echo ",
            verify="after-prefix",
            settle=0.3,
        ),
    )
}


# ---- the load generator ----


def build_c_program(
    source: Path, target: Path, what: str, flags: tuple[str, ...] = (), libs: tuple[str, ...] = ()
) -> Path:
    """Compile ``source`` into ``target`` unless it is up to date; return ``target``."""
    if target.exists() and target.stat().st_mtime >= source.stat().st_mtime:
        return target
    compiler = os.environ.get("CC", "cc")
    if shutil.which(compiler) is None:
        sys.exit(f"error: no C compiler ({compiler}) to build {source.relative_to(REPO)}")
    BUILD.mkdir(exist_ok=True)
    partial = target.with_name(target.name + ".partial")
    cmd = [compiler, "-O2", "-Wall", "-Wextra", *flags, "-o", str(partial), str(source)]
    cmd += [*libs, "-lm"]
    print(f"building {what}: {' '.join(cmd)}", file=sys.stderr)
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
    if done.returncode != 0:
        sys.exit(f"error: building {what} failed:\n{done.stdout}{done.stderr}")
    partial.replace(target)
    return target


def build_loadgen() -> Path:
    """Compile ``loadgen.c`` into ``.build/loadgen`` unless it is up to date; return its path."""
    return build_c_program(LOADGEN_SRC, LOADGEN, "the load generator")


def _openssl_headers() -> bool:
    """Whether the compiler finds ``openssl/ssl.h`` (Debian: the libssl-dev package)."""
    compiler = os.environ.get("CC", "cc")
    probe = subprocess.run(
        [compiler, "-E", "-x", "c", "-"],
        input="#include <openssl/ssl.h>\n",
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    return probe.returncode == 0


def _install_libssl_dev() -> None:
    """``apt-get install libssl-dev``, as root or through sudo; exit with a hint on failure."""
    hint = "install OpenSSL's headers (Debian: libssl-dev), or leave out the TLS rows"
    if shutil.which("apt-get") is None:
        sys.exit(f"error: openssl/ssl.h is missing and there is no apt-get: {hint}")
    sudo = [] if os.geteuid() == 0 else ["sudo", "-n"]
    print("installing libssl-dev (openssl/ssl.h) for the TLS load generator", file=sys.stderr)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "libssl-dev"]):
        done = subprocess.run(
            [*sudo, *cmd], capture_output=True, text=True, env=env, timeout=600, check=False
        )
        if done.returncode != 0:
            sys.exit(f"error: {' '.join(cmd)} failed: {_last_line(done.stderr)}; {hint}")


def build_loadgen_tls() -> Path:
    """Compile ``loadgen.c`` with TLS into ``.build/loadgen-tls``; install libssl-dev if needed."""
    up_to_date = LOADGEN_TLS.exists() and LOADGEN_TLS.stat().st_mtime >= LOADGEN_SRC.stat().st_mtime
    if not up_to_date and not _openssl_headers():
        _install_libssl_dev()
    return build_c_program(
        LOADGEN_SRC,
        LOADGEN_TLS,
        "the TLS load generator",
        ("-DLOADGEN_TLS",),
        ("-lssl", "-lcrypto"),
    )


def run_loadgen(
    loadgen: Path,
    pin: list[str],
    host: str,
    port: int,
    config: Config,
    suite: Suite,
    duration: float,
    warmup: float,
    *,
    tls_ca: Path | None = None,
) -> dict[str, Any]:
    """Run one measurement; return the load generator's JSON, or ``ok: false`` and an error.

    For a TLS configuration, ``loadgen`` is the TLS build and ``tls_ca`` the certificate it
    verifies the server's against (for the name ``localhost``).
    """
    cmd = [
        *pin,
        str(loadgen),
        "--host",
        host,
        "--port",
        str(port),
        "--connections",
        str(config.connections),
        "--size",
        str(config.size),
        "--depth",
        str(config.depth),
        "--duration",
        str(duration),
        "--warmup",
        str(warmup),
    ]
    if suite.prefix:
        cmd += ["--prefix", suite.prefix]
    if suite.settle:
        cmd += ["--settle", str(suite.settle)]
    if suite.verify == "none":
        cmd.append("--no-verify")
    elif suite.verify == "after-prefix":
        cmd.append("--expect-after-prefix")
    if config.tls:
        cmd += ["--tls", "--tls-server-name", TLS_SERVER_NAME]
        if tls_ca is not None:
            cmd += ["--tls-ca", str(tls_ca)]
    # Connecting, then the TLS handshakes, get 3 s each.
    bound = (6.0 if config.tls else 3.0) + suite.settle + warmup + duration + LOADGEN_SLACK
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=bound, check=False)
    except subprocess.TimeoutExpired:
        return {"ok": False, "error": f"the load generator did not finish in {bound:.0f} s"}
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if not lines:
        detail = _last_line(done.stderr) or f"exit code {done.returncode}"
        return {"ok": False, "error": f"the load generator printed no result: {detail}"}
    try:
        result: dict[str, Any] = json.loads(lines[-1])
    except json.JSONDecodeError:
        return {"ok": False, "error": f"the load generator printed bad JSON: {lines[-1][:200]}"}
    if done.stderr.strip():
        result["stderr"] = done.stderr.strip().splitlines()[:5]
        if not result.get("ok"):  # e.g. OpenSSL's reason for a failed handshake
            result["error"] = f"{result.get('error')}: {result['stderr'][0]}"
    return result


# ---- servers ----


@dataclass
class RunningServer:
    """A started server: its process, the address it reported and its output so far."""

    server: Server
    proc: subprocess.Popen[bytes]
    host: str
    port: int
    stderr: IO[bytes]
    stdout_tail: collections.deque[str] = field(default_factory=lambda: _deque(20))
    tls: bool = False  # the server's TLS instance, for the TLS rows

    @property
    def label(self) -> str:
        """The server's name, and ``(TLS)`` for its TLS instance."""
        return f"{self.server.name} (TLS)" if self.tls else self.server.name

    def failure(self) -> str | None:
        """Why the server is no longer usable, or None while it runs."""
        code = self.proc.poll()
        if code is None:
            return None
        said = _tail(self.stderr) or _last_line("\n".join(self.stdout_tail)) or "no output"
        return f"the server exited with code {code}: {said}"


def _deque(size: int) -> collections.deque[str]:
    return collections.deque(maxlen=size)


def missing_modules(server: Server, *, tls: bool = False) -> list[str]:
    """The modules the server needs (for TLS too, with ``tls``) that this Python lacks."""
    needed = server.modules + (server.tls_modules if tls else ())
    return [name for name in needed if importlib.util.find_spec(name) is None]


def make_tls_files(directory: Path) -> tuple[Path, Path] | str:
    """A self-signed certificate for localhost and 127.0.0.1 and its key, made by ``enlace cert``.

    Returns the two paths, or why they could not be made.
    """
    cmd = [sys.executable, "-m", "enlace", "cert", TLS_SERVER_NAME, "127.0.0.1"]
    cmd += ["--out", str(directory)]
    done = subprocess.run(
        cmd, cwd=REPO, env=_server_env(), capture_output=True, text=True, timeout=60, check=False
    )
    cert, key = directory / "enlace-cert.pem", directory / "enlace-key.pem"
    if done.returncode != 0 or not cert.is_file() or not key.is_file():
        return f"enlace cert failed: {_last_line(done.stderr) or _last_line(done.stdout)}"
    return cert, key


def _server_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONUNBUFFERED"] = "1"
    src = REPO / "src"
    if (src / "enlace").is_dir():  # run the work tree's enlace even when it is not installed
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(src), env.get("PYTHONPATH")]))
    return env


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else ""


def _tail(stream: IO[bytes]) -> str:
    stream.flush()
    stream.seek(0)
    return _last_line(stream.read()[-4000:].decode("utf-8", "replace"))


def _pump(stdout: IO[bytes], lines: queue.Queue[str | None], tail: collections.deque[str]) -> None:
    """Read a server's stdout until it closes, so the server never blocks on a full pipe."""
    for raw in stdout:
        line = raw.decode("utf-8", "replace").rstrip()
        tail.append(line)
        lines.put(line)
    lines.put(None)


def _loopback(host: str) -> str | None:
    """The address to connect to for a reported host, or None when it is not on this machine."""
    host = host.strip("[]")
    if host in ("", "0.0.0.0", "localhost"):
        return "127.0.0.1"
    if host == "::":
        return "::1"
    try:
        return host if ipaddress.ip_address(host).is_loopback else None
    except ValueError:
        return None


def server_command(server: Server, tls_files: tuple[Path, Path] | None = None) -> list[str]:
    """The server's command line after ``python``; its TLS one with ``tls_files``."""
    args = list(server.args)
    if tls_files is not None:
        if server.tls_args is None:
            raise ValueError(f"{server.name} cannot serve TLS")
        cert, key = tls_files
        args += [arg.format(cert=cert, key=key) for arg in server.tls_args]
    return args


def start_server(
    server: Server, pin: list[str], tls_files: tuple[Path, Path] | None = None
) -> RunningServer | str:
    """Start a server and wait for its ``listening on`` line; return it or why it failed.

    With ``tls_files`` (certificate, key), the server's TLS instance.
    """
    cmd = [*pin, sys.executable, *server_command(server, tls_files)]
    stderr = tempfile.TemporaryFile()  # noqa: SIM115 (closed in stop_server)
    try:
        proc = subprocess.Popen(
            cmd,
            cwd=REPO,
            env=_server_env(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=stderr,
            start_new_session=True,  # Ctrl-C reaches only this script, which stops the server
        )
    except OSError as exc:
        stderr.close()
        return f"cannot start {cmd[0]}: {exc}"
    assert proc.stdout is not None
    lines: queue.Queue[str | None] = queue.Queue()
    running = RunningServer(server, proc, "", 0, stderr, tls=tls_files is not None)
    threading.Thread(
        target=_pump, args=(proc.stdout, lines, running.stdout_tail), daemon=True
    ).start()
    deadline = time.monotonic() + START_TIMEOUT
    reason = f"no 'listening on HOST:PORT' line within {START_TIMEOUT:.0f} s"
    while (left := deadline - time.monotonic()) > 0:
        try:
            line = lines.get(timeout=min(left, 0.5))
        except queue.Empty:
            continue
        if line is None:  # stdout closed: the server has exited or is about to
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=2)
            reason = running.failure() or "the server closed its stdout"
            break
        match = LISTENING.search(line)
        if match:
            host = _loopback(match.group(1))
            if host is None:
                reason = f"the server listens on {match.group(1)}, not on a loopback address"
                break
            running.host, running.port = host, int(match.group(2))
            return running
    stop_server(running)
    return reason


def stop_server(running: RunningServer) -> str:
    """Stop the server by its PID: SIGTERM, then SIGKILL after a timeout.  Say how it ended."""
    proc = running.proc
    try:
        if proc.poll() is not None:
            return f"had already exited with code {proc.returncode}"
        proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=STOP_TIMEOUT)
            return f"did not stop within {STOP_TIMEOUT:.0f} s of SIGTERM; killed"
        return f"stopped on SIGTERM with code {code}"
    finally:
        running.stderr.close()


# ---- the run ----


def _pinning(mode: str) -> tuple[list[str], list[str], str]:
    """The ``taskset`` prefixes for the server and the load generator, and what was done."""
    if mode == "none":
        return [], [], "not pinned (--pin none)"
    if shutil.which("taskset") is None:
        return [], [], "not pinned: taskset is missing (apt-get install util-linux)"
    cpus = sorted(os.sched_getaffinity(0))
    if mode == "same":
        core = str(cpus[0])
        note = f"server and load generator share core {core} (taskset, --pin same)"
        return ["taskset", "-c", core], ["taskset", "-c", core], note
    if len(cpus) < 2:
        return [], [], "not pinned: fewer than 2 cores available"
    server, loadgen = str(cpus[0]), str(cpus[1])
    note = f"server on core {server}, load generator on core {loadgen} (taskset)"
    return ["taskset", "-c", server], ["taskset", "-c", loadgen], note


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


def _cell_summary(result: dict[str, Any]) -> str:
    if not result.get("ok"):
        return f"FAILED: {result.get('error')}"
    text = f"{_rate(result['rps'])} req/s, p50 {_us(result['p50_us'])}, p99 {_us(result['p99_us'])}"
    if "cpu" in result:
        text += f", load generator CPU {result['cpu']:.0%}"
    if result.get("errors"):
        text += f", {result['errors']} errors"
    return text


@dataclass(frozen=True)
class Plan:
    """What to run and how: the chosen servers and configurations, times and pinning."""

    suite: Suite
    servers: list[Server]
    configs: list[Config]
    duration: float
    warmup: float
    repeat: int
    pin_server: list[str]
    pin_loadgen: list[str]


def _cpu_seconds(pid: int) -> float | None:
    """CPU time used so far by a process (Linux), or None when it cannot be read."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None


def machine_busy(seconds: float = 0.5) -> float | None:
    """The share of all cores busy over a short sample (Linux), or None when unknown."""

    def sample() -> tuple[int, int]:
        values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        idle = values[3] + (values[4] if len(values) > 4 else 0)  # idle + iowait
        return sum(values[:8]), idle

    try:
        total0, idle0 = sample()
        time.sleep(seconds)
        total1, idle1 = sample()
    except (OSError, ValueError, IndexError):
        return None
    return 1 - (idle1 - idle0) / (total1 - total0) if total1 > total0 else None


def _warn_busy_when_idle(running: list[RunningServer]) -> None:
    """All servers share one core, so one that spins while idle would slow the others."""
    before = {r.label: _cpu_seconds(r.proc.pid) for r in running}
    time.sleep(0.5)
    for r in running:
        start, end = before[r.label], _cpu_seconds(r.proc.pid)
        if start is not None and end is not None and end - start > 0.05:
            print(
                f"warning: {r.label} used {(end - start) / 0.5:.0%} of a core while idle; "
                "it slows every server measured with it",
                file=sys.stderr,
            )


def _median_run(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The run with the median requests/s (the lower middle one for an even count)."""
    good = sorted((r for r in runs if r.get("ok")), key=lambda r: float(r["rps"]))
    if not good:
        return runs[-1]
    chosen = dict(good[(len(good) - 1) // 2])
    if len(runs) > 1:
        chosen["runs"] = runs
    return chosen


def _start_all(
    plan: Plan, tls_files: tuple[Path, Path] | str | None, skipped: dict[str, str]
) -> list[RunningServer]:
    """Start the plain instances the plain rows need and the TLS ones the TLS rows need."""
    running: list[RunningServer] = []
    kinds = sorted({config.tls for config in plan.configs})  # plain first
    for tls in kinds:
        for server in plan.servers:
            label = f"{server.name} (TLS)" if tls else server.name
            missing = missing_modules(server, tls=tls)
            hints = [server.install] if set(missing) & set(server.modules) else []
            if set(missing) & set(server.tls_modules if tls else ()):
                hints.append(server.tls_install)
            install = "; ".join(hints)
            started: RunningServer | str
            if missing:
                started = f"needs {', '.join(missing)}: {install}"
            elif tls and server.tls_args is None:
                started = "cannot serve TLS here (its TLS rows show n/a)"
            elif tls and isinstance(tls_files, str):
                started = tls_files
            else:
                files = tls_files if tls and not isinstance(tls_files, str) else None
                started = start_server(server, plan.pin_server, files)
            if isinstance(started, str):
                skipped[label] = started
                print(f"skip {label}: {started}", file=sys.stderr)
            else:
                running.append(started)
                print(f"{label}: listening on {started.host}:{started.port}", file=sys.stderr)
    return running


def run_plan(plan: Plan) -> tuple[dict[str, dict[str, Any]], dict[str, str]]:
    """Start every server, run the cells, stop the servers; return results and skip reasons.

    All servers stay up for the whole run (idle ones use no CPU), and the cells are
    interleaved: for each round, for each configuration, every server in turn.  Noise from the
    machine then falls on all servers alike instead of on whichever ran during a bad minute.
    A TLS row runs against each server's TLS instance (a second process, started with a
    certificate made for the run), which stays up beside the plain one.
    """
    tls = any(config.tls for config in plan.configs)
    loadgen = build_loadgen() if any(not c.tls for c in plan.configs) else None
    loadgen_tls = build_loadgen_tls() if tls else None
    skipped: dict[str, str] = {}
    running: list[RunningServer] = []
    with tempfile.TemporaryDirectory(prefix="enlace-bench-") as tmp:
        tls_files = make_tls_files(Path(tmp)) if tls else None
        try:
            running = _start_all(plan, tls_files, skipped)
            if running:
                _warn_busy_when_idle(running)
            ca = tls_files[0] if isinstance(tls_files, tuple) else None
            loadgens = {False: loadgen, True: loadgen_tls}
            runs = _run_cells(plan, loadgens, ca, running) if running else {}
        finally:
            endings = {r.label: stop_server(r) for r in running}
    results: dict[str, dict[str, Any]] = {}
    for r in running:
        name = r.server.name
        print(f"{r.label}: {endings[r.label]}", file=sys.stderr)
        entry = results.setdefault(name, {"cells": {}})
        prefix = "tls_" if r.tls else ""
        entry[f"{prefix}command"] = [sys.executable, *r.server.args]
        if r.tls:
            # The certificate's temporary paths are gone after the run: show placeholders.
            entry["tls_command"] += list(r.server.tls_args or ())
        entry[f"{prefix}stop"] = endings[r.label]
        for key, cell_runs in runs[r.label].items():
            entry["cells"][key] = _median_run(cell_runs)
    # Columns in the suite's order, whichever instance started first.
    order = [s.name for s in plan.servers]
    return {name: results[name] for name in order if name in results}, skipped


def _run_cells(
    plan: Plan,
    loadgens: dict[bool, Path | None],
    tls_ca: Path | None,
    running: list[RunningServer],
) -> dict[str, dict[str, list[dict[str, Any]]]]:
    """Every cell's runs, by instance label and configuration key."""
    runs: dict[str, dict[str, list[dict[str, Any]]]] = {
        r.label: {c.key: [] for c in plan.configs if c.tls == r.tls} for r in running
    }
    total = plan.repeat * sum(len(cells) for cells in runs.values())
    done = 0
    for round_ in range(plan.repeat):
        order = running[round_ % len(running) :] + running[: round_ % len(running)]
        for config in plan.configs:
            loadgen = loadgens[config.tls]
            for server in order:
                if server.tls != config.tls or loadgen is None:
                    continue
                done += 1
                failure = server.failure()
                if failure:
                    result: dict[str, Any] = {"ok": False, "error": failure}
                else:
                    result = run_loadgen(
                        loadgen,
                        plan.pin_loadgen,
                        server.host,
                        server.port,
                        config,
                        plan.suite,
                        plan.duration,
                        plan.warmup,
                        tls_ca=tls_ca,
                    )
                    if not result.get("ok") and (failure := server.failure()):
                        result["error"] = f"{result.get('error')} ({failure})"
                runs[server.label][config.key].append(result)
                summary = _cell_summary(result)
                print(
                    f"[{done:2}/{total}] {server.server.name:17} {config.label:31} {summary}",
                    file=sys.stderr,
                )
                time.sleep(0.05)  # let the server notice the closed connections
    return runs


# ---- the table ----


def _rate(rps: float) -> str:
    if rps >= 1e6:
        return f"{rps / 1e6:.2f}M"
    if rps >= 1e3:
        return f"{rps / 1e3:.1f}k"
    return f"{rps:.0f}"


def _us(value: float) -> str:
    if value >= 10_000:
        return f"{value / 1000:.0f}ms"
    if value >= 1000:
        return f"{value / 1000:.1f}ms"
    return f"{value:.0f}us"


def _ok(results: dict[str, dict[str, Any]], server: str, config: Config) -> dict[str, Any] | None:
    cell = results.get(server, {}).get("cells", {}).get(config.key)
    return cell if cell and cell.get("ok") and cell.get("requests") else None


def compute_ratios(
    suite: Suite, configs: list[Config], results: dict[str, dict[str, Any]]
) -> dict[str, dict[str, Any]]:
    """For each ratio column and configuration: the value and the peer it was divided by."""
    ratios: dict[str, dict[str, Any]] = {}
    for ratio in suite.ratios:
        ratios[ratio.label] = {}
        for config in configs:
            top = _ok(results, ratio.numerator, config)
            cells = {name: _ok(results, name, config) for name in ratio.denominators}
            peers = [(cell["rps"], name) for name, cell in cells.items() if cell]
            if top and peers:
                best_rps, best = max(peers)
                value = {"value": top["rps"] / best_rps, "versus": best}
            else:
                value = {"value": None, "versus": None}
            ratios[ratio.label][config.key] = value
    return ratios


def _render(rows: list[list[str]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = []
    for n, row in enumerate(rows):
        cells = [row[0].ljust(widths[0])] + [
            c.rjust(w) for c, w in zip(row[1:], widths[1:], strict=True)
        ]
        lines.append("  ".join(cells).rstrip())
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def format_tables(
    suite: Suite,
    configs: list[Config],
    results: dict[str, dict[str, Any]],
    ratios: dict[str, dict[str, Any]],
) -> str:
    """The throughput table with ratio columns, then the fairness table."""
    names = list(results)
    header = ["requests/s", *names, *(r.label for r in suite.ratios)]
    rows = [header]
    for config in configs:
        label = f"{config.label} (p50/p99)" if config.latency else config.label
        row = [label]
        for name in names:
            cell = results[name]["cells"].get(config.key)
            if cell is None:  # this instance was skipped (the reason is under the table)
                row.append("n/a")
                continue
            if not cell.get("ok"):
                row.append("FAILED")
                continue
            text = _rate(cell["rps"])
            if config.latency:
                text += f" {_us(cell['p50_us'])}/{_us(cell['p99_us'])}"
            if cell.get("errors"):
                text += " !"
            row.append(text)
        for ratio in suite.ratios:
            entry = ratios[ratio.label][config.key]
            if entry["value"] is None:
                row.append("n/a")
            elif len(ratio.denominators) > 1:
                row.append(f"{entry['value']:.2f} ({entry['versus']})")
            else:
                row.append(f"{entry['value']:.2f}")
        rows.append(row)
    out = [_render(rows)]

    fair = [["fairness: slowest/fastest conn", *names]]
    for config in configs:
        if config.connections < 2:
            continue
        row = [config.label]
        for name in names:
            cell = results[name]["cells"].get(config.key, {})
            if not cell.get("ok") or not cell.get("per_conn_max"):
                row.append("-")
                continue
            share = cell["per_conn_min"] / cell["per_conn_max"]
            row.append(f"{share:.2f}" + (" STARVED" if cell["per_conn_min"] == 0 else ""))
        fair.append(row)
    if len(fair) > 1 and names:
        out.append(_render(fair))

    cost = compute_tls_cost(configs, results)
    if cost:
        table = [["TLS cost: TLS / plain requests/s", *names]]
        for key, per_server in cost.items():
            label = next(c.label for c in configs if c.key == key)
            values = [per_server.get(name) for name in names]
            table.append([label, *("-" if v is None else f"{v:.2f}" for v in values)])
        out.append(_render(table))
    return "\n\n".join(out)


def compute_tls_cost(
    configs: list[Config], results: dict[str, dict[str, Any]]
) -> dict[str, dict[str, float | None]]:
    """For each TLS row whose plain row ran too: each server's TLS rps over its plain rps.

    0.40 means the server keeps 40 % of its plain throughput over TLS at that load.
    """
    keys = {c.key for c in configs}
    cost: dict[str, dict[str, float | None]] = {}
    for config in configs:
        if not config.tls or config.plain not in keys:
            continue
        plain = next(c for c in configs if c.key == config.plain)
        cost[config.key] = {}
        for name in results:
            tls_cell, plain_cell = _ok(results, name, config), _ok(results, name, plain)
            value = tls_cell["rps"] / plain_cell["rps"] if tls_cell and plain_cell else None
            cost[config.key][name] = value
    return cost


def format_loadgen_cpu(configs: list[Config], results: dict[str, dict[str, Any]]) -> str:
    """The load generator's highest CPU share in each row, and its TLS version and cipher."""
    parts, tls = [], ""
    for config in configs:
        cells = [_ok(results, name, config) for name in results]
        shares = [cell["cpu"] for cell in cells if cell and "cpu" in cell]
        if shares:
            parts.append(f"{config.label} {max(shares):.0%}")
        for cell in cells:
            if cell and cell.get("tls_version") and not tls:
                tls = (
                    f"TLS rows: {cell['tls_version']} {cell['tls_cipher']}, an ECDSA P-256 "
                    "certificate (enlace cert), a full handshake per connection before the warmup"
                )
    lines = []
    if parts:
        lines.append("load generator CPU (its core, highest in the row): " + ", ".join(parts))
    if tls:
        lines.append(tls)
    return "\n".join(lines)


def format_notes(
    configs: list[Config], results: dict[str, dict[str, Any]], skipped: dict[str, str]
) -> str:
    """Failures, errors counted during the run, and the servers that were skipped."""
    notes = []
    for name, entry in results.items():
        for config in configs:
            cell = entry["cells"].get(config.key, {})
            if config.key not in entry["cells"]:
                continue  # a skipped instance: said below
            if not cell.get("ok"):
                notes.append(f"FAILED {name}, {config.label}: {cell.get('error')}")
            elif cell.get("errors") or cell.get("unexpected_frames"):
                counts = ", ".join(f"{key} {cell[key]}" for key in ERROR_COUNTS if cell.get(key))
                notes.append(f"! {name}, {config.label}: {counts}")
            if cell.get("ok") and cell.get("cpu", 0.0) > LOADGEN_BUSY:
                notes.append(
                    f"! {name}, {config.label}: the load generator used {cell['cpu']:.0%} of its "
                    "core; the number may be the load generator's limit, not the server's"
                )
    for name, reason in skipped.items():
        notes.append(f"skipped {name}: {reason}")
    return "\n".join(notes)


# ---- main ----


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
    if args.duration <= 0 or args.warmup < 0 or args.repeat < 1:
        parser.error("--duration and --repeat must be positive and --warmup not negative")
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
    pin_server, pin_loadgen, pinning = _pinning(args.pin)
    print(f"suite {suite.name}: {suite.description}; {pinning}", file=sys.stderr)
    missing = sorted({m for s in servers for m in missing_modules(s)})
    if missing:
        print(f"missing: {' '.join(missing)} (pip install {' '.join(missing)})", file=sys.stderr)

    busy = machine_busy()
    if busy is not None and busy > 0.1:
        print(
            f"warning: the machine is {busy:.0%} busy before the run (other processes); "
            "expect noisy numbers, or use --repeat",
            file=sys.stderr,
        )
    started = time.monotonic()
    plan = Plan(
        suite, servers, configs, args.duration, args.warmup, args.repeat, pin_server, pin_loadgen
    )
    results, skipped = run_plan(plan)
    ratios = compute_ratios(suite, configs, results)
    elapsed = time.monotonic() - started

    print()
    print(
        f"enlace benchmarks, suite {suite.name}: {suite.description}. {args.duration:g} s per "
        f"cell after {args.warmup:g} s warmup"
        + (f", median of {args.repeat} interleaved runs" if args.repeat > 1 else "")
        + f"; {pinning}; Python {platform.python_version()}."
    )
    print()
    if results:
        print(format_tables(suite, configs, results, ratios))
    else:
        print("no server could run")
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
        "pinning": pinning,
        "duration": args.duration,
        "warmup": args.warmup,
        "repeat": args.repeat,
        "elapsed": round(elapsed, 1),
        "busy_before": None if busy is None else round(busy, 3),
        "configs": {c.key: c.__dict__ for c in configs},
        "servers": results,
        "skipped": skipped,
        "ratios": ratios,
        "tls_cost": compute_tls_cost(configs, results),
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\n{len(results)} servers, {elapsed:.0f} s; results in {args.output}")
    failed = any(not cell.get("ok") for r in results.values() for cell in r["cells"].values())
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
