"""Servers under test as processes: start one, wait until it serves, stop it by its PID.

A server that prints ``listening on HOST:PORT`` (enlace, the peers, ``chat_server.py``) is
started by :func:`start_server`, which reads that line; one that prints nothing useful
(``redis-server``, nginx, ``http.server``) is started on a port chosen beforehand by
:func:`start_polled`, which probes it.  Either way :func:`stop_server` ends it by its PID:
SIGTERM, then SIGKILL after :data:`STOP_TIMEOUT`.  Every server runs in a session of its own,
so a Ctrl-C reaches only the harness, which then stops it.  Also here: the ``taskset``
prefixes (:func:`pinning`), how busy the machine or a process is, and the open-files limit
that many connections need (:func:`raise_open_files`).
"""

from __future__ import annotations

import collections
import contextlib
import importlib.util
import ipaddress
import os
import queue
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from harness import REPO

__all__ = [
    "BUSY",
    "LISTENING",
    "START_TIMEOUT",
    "STOP_TIMEOUT",
    "TLS_SERVER_NAME",
    "RunningServer",
    "Server",
    "busy_before_run",
    "cpu_seconds",
    "free_port",
    "last_line",
    "machine_busy",
    "make_tls_files",
    "missing_modules",
    "pinning",
    "port_open",
    "raise_open_files",
    "server_command",
    "server_env",
    "speedups_state",
    "start_polled",
    "start_server",
    "steal_seconds",
    "stop_server",
]

START_TIMEOUT = 20.0  # seconds for a server to print its "listening on" line
STOP_TIMEOUT = 5.0  # seconds between SIGTERM and SIGKILL
LISTENING = re.compile(r"listening on (\[[^\]]+\]|[^\s:\[\]]+):(\d+)")
TLS_SERVER_NAME = "localhost"  # the name the TLS load generator verifies
BUSY = 0.1  # share of the cores busy before a run above which its numbers are noisy


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
        said = _tail(self.stderr) or last_line("\n".join(self.stdout_tail)) or "no output"
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
        cmd, cwd=REPO, env=server_env(), capture_output=True, text=True, timeout=60, check=False
    )
    cert, key = directory / "enlace-cert.pem", directory / "enlace-key.pem"
    if done.returncode != 0 or not cert.is_file() or not key.is_file():
        return f"enlace cert failed: {last_line(done.stderr) or last_line(done.stdout)}"
    return cert, key


def server_env() -> dict[str, str]:
    """The environment of a server: unbuffered output, the work tree's ``src/`` importable."""
    env = dict(os.environ)
    env["PYTHONUNBUFFERED"] = "1"
    src = REPO / "src"
    if (src / "enlace").is_dir():  # run the work tree's enlace even when it is not installed
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(src), env.get("PYTHONPATH")]))
    return env


def speedups_state() -> str:
    """Whether enlace's servers run on its C module: ``on``, or ``off`` with how to build it."""
    code = "from enlace.protocol import fastpath; print(fastpath.SPEEDUPS)"
    done = subprocess.run(
        [sys.executable, "-c", code],
        env=server_env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if done.stdout.strip() == "True":
        return "on"
    if done.returncode != 0:
        return f"unknown ({last_line(done.stderr)})"
    return "off (build it with: pip install -e .)"


def last_line(text: str) -> str:
    """The last line of ``text`` that is not blank, stripped; empty when there is none."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else ""


def _tail(stream: IO[bytes]) -> str:
    stream.flush()
    stream.seek(0)
    return last_line(stream.read()[-4000:].decode("utf-8", "replace"))


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


def _spawn(cmd: list[str], *, pipe_stdout: bool) -> tuple[subprocess.Popen[bytes], IO[bytes]] | str:
    """Start a server in a session of its own; return it and its output file, or why not.

    The file (closed by :func:`stop_server`) gets its stderr, and its stdout too unless
    ``pipe_stdout``, which leaves stdout a pipe for the ready line.
    """
    output = tempfile.TemporaryFile()  # noqa: SIM115 (closed in stop_server)
    try:
        proc = subprocess.Popen(
            cmd,
            cwd=REPO,
            env=server_env(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE if pipe_stdout else output,
            stderr=output if pipe_stdout else subprocess.STDOUT,
            start_new_session=True,  # Ctrl-C reaches only this script, which stops the server
        )
    except OSError as exc:
        output.close()
        return f"cannot start {cmd[0]}: {exc}"
    return proc, output


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
    spawned = _spawn(cmd, pipe_stdout=True)
    if isinstance(spawned, str):
        return spawned
    proc, stderr = spawned
    assert proc.stdout is not None
    lines: queue.Queue[str | None] = queue.Queue()
    running = RunningServer(server, proc, "", 0, stderr, tls=tls_files is not None)
    threading.Thread(
        target=_pump, args=(proc.stdout, lines, running.stdout_tail), daemon=True
    ).start()
    deadline = time.monotonic() + START_TIMEOUT
    reason = f"no 'listening on HOST:PORT' line within {START_TIMEOUT:.0f} s"
    try:
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
    except BaseException:
        # Interrupted (Ctrl-C) while waiting: the server is in a session of its own and would
        # outlive the harness.
        stop_server(running)
        raise
    stop_server(running)
    return reason


def start_polled(
    name: str,
    cmd: list[str],
    port: int,
    ready: Callable[[int], bool],
    *,
    timeout: float,
    waiting_for: str,
    kind: str = "peer",
) -> RunningServer | str:
    """Start a server on ``port`` of 127.0.0.1 and poll ``ready(port)``; return it or why not.

    For servers with no ready line of ours.  ``cmd`` is the whole command line (pinning
    included); its output goes to a temporary file, read only to say why it failed.
    ``waiting_for`` says what ``ready`` checks, for the message when it never is.
    """
    spawned = _spawn(cmd, pipe_stdout=False)
    if isinstance(spawned, str):
        return spawned
    proc, output = spawned
    running = RunningServer(Server(name, tuple(cmd), kind), proc, "127.0.0.1", port, output)
    deadline = time.monotonic() + timeout
    reason = f"{name} did not {waiting_for} within {timeout:g} s"
    try:
        while time.monotonic() < deadline:
            if (failure := running.failure()) is not None:
                reason = failure
                break
            if ready(port):
                return running
            time.sleep(0.05)  # a poll interval: the server has no line to wait for
    except BaseException:  # interrupted: stop it, as start_server does
        stop_server(running)
        raise
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


def free_port() -> int:
    """A TCP port of 127.0.0.1 that was free a moment ago (for servers that take no port 0)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def port_open(port: int) -> bool:
    """Whether something accepts connections on ``port`` of 127.0.0.1."""
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
    except OSError:
        return False
    return True


def pinning(mode: str, other: str = "load generator") -> tuple[list[str], list[str], str]:
    """The ``taskset`` prefixes for the server and the ``other`` side, and what was done.

    ``mode``: ``split`` (the server on the first core, the other side on the second),
    ``same`` (both on the first core) or ``none``.
    """
    if mode == "none":
        return [], [], "not pinned (--pin none)"
    if shutil.which("taskset") is None:
        return [], [], "not pinned: taskset is missing (apt-get install util-linux)"
    cpus = sorted(os.sched_getaffinity(0))
    if mode == "same":
        core = str(cpus[0])
        note = f"server and {other} share core {core} (taskset, --pin same)"
        return ["taskset", "-c", core], ["taskset", "-c", core], note
    if len(cpus) < 2:
        return [], [], "not pinned: fewer than 2 cores available"
    server, client = str(cpus[0]), str(cpus[1])
    note = f"server on core {server}, {other} on core {client} (taskset)"
    return ["taskset", "-c", server], ["taskset", "-c", client], note


def cpu_seconds(pid: int) -> float | None:
    """CPU time used so far by a process (Linux), or None when it cannot be read."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None


def busy_before_run(advice: str = "") -> float | None:
    """:func:`machine_busy`, with a warning on stderr (then ``advice``) when over :data:`BUSY`."""
    busy = machine_busy()
    if busy is not None and busy > BUSY:
        print(
            f"warning: the machine is {busy:.0%} busy before the run (other processes); "
            f"expect noisy numbers{advice}",
            file=sys.stderr,
        )
    return busy


def machine_busy(seconds: float = 0.5) -> float | None:
    """The share of all cores busy over a short sample (Linux), or None when unknown."""

    def sample() -> tuple[int, int]:
        values = _cpu_ticks()
        idle = values[3] + (values[4] if len(values) > 4 else 0)  # idle + iowait
        return sum(values[:8]), idle

    try:
        total0, idle0 = sample()
        time.sleep(seconds)  # the sampling window, not a synchronization
        total1, idle1 = sample()
    except (OSError, ValueError, IndexError):
        return None
    return 1 - (idle1 - idle0) / (total1 - total0) if total1 > total0 else None


def steal_seconds() -> float | None:
    """CPU time the hypervisor gave to other guests so far, all cores summed (Linux), or None.

    On a virtual machine, time stolen from the cores during a cell slows whichever server
    ran then; the harness measures it around each cell so that such a cell can be told apart.
    """
    try:
        return _cpu_ticks()[7] / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


def _cpu_ticks() -> list[int]:
    """The machine's CPU time by kind (user, nice, system, idle, iowait, irq, softirq,
    steal...), summed over its cores, in clock ticks: the first line of ``/proc/stat``."""
    return [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]


def raise_open_files(needed: int) -> tuple[bool, str]:
    """Raise this process's soft open-files limit to ``needed`` (children inherit it).

    Returns whether the limit is now at least ``needed``, and what happened, in words.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= needed:
        return True, f"open-files limit {soft}"
    target = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (ValueError, OSError) as exc:
        return False, f"open-files limit {soft}: cannot raise it to {needed} ({exc})"
    if target < needed:
        now = f"raised from {soft} to {target}" if target > soft else str(soft)
        return False, f"open-files limit {now} only (the hard limit); {needed} wanted"
    return True, f"open-files limit raised from {soft} to {target}"
