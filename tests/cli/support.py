"""Running the ``enlace`` command as a real subprocess, as a user would."""

from __future__ import annotations

import contextlib
import os
import re
import selectors
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pexpect
import pyte

ENLACE = [sys.executable, "-m", "enlace"]
_LISTENING = re.compile(rb"listening on (?:\[([^\]]+)\]|([^\s:]+)):(\d+)")


def run(*args: str, stdin: bytes = b"", timeout: float = 15) -> subprocess.CompletedProcess[bytes]:
    """Run ``enlace ARGS`` to completion."""
    return subprocess.run(
        [*ENLACE, *args], input=stdin, capture_output=True, timeout=timeout, check=False
    )


def free_port() -> int:
    """A loopback TCP port nothing listens on (for "connection refused" and late starts)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Cli:
    """A running ``enlace`` server process and what it printed while starting."""

    def __init__(self, process: subprocess.Popen[bytes], banner: bytes) -> None:
        self.process = process
        self.banner = banner

    def ports(self) -> list[int]:
        return [int(m.group(3)) for m in _LISTENING.finditer(self.banner)]

    def table(self) -> dict[str, tuple[str, int]]:
        """``enlace up``'s table: service name -> (transport, port)."""
        rows = re.findall(rb"^  (\w+)\s+(tcp|udp) \S+:(\d+)", self.banner, re.MULTILINE)
        return {name.decode(): (kind.decode(), int(port)) for name, kind, port in rows}

    @property
    def port(self) -> int:
        return self.ports()[0]

    def stop(self, signum: int = signal.SIGINT, timeout: float = 15) -> tuple[int, bytes]:
        """Signal the process, wait for it, return its exit code and standard error."""
        self.process.send_signal(signum)
        _, err = self.process.communicate(timeout=timeout)
        return self.process.returncode, err


def read_until(process: subprocess.Popen[bytes], marker: bytes, timeout: float = 10) -> bytes:
    """What ``process`` printed on standard output up to and including ``marker``."""
    assert process.stdout is not None
    fd = process.stdout.fileno()
    selector = selectors.DefaultSelector()
    selector.register(fd, selectors.EVENT_READ)
    output = b""
    deadline = time.monotonic() + timeout
    try:
        while marker not in output:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not selector.select(remaining):
                raise AssertionError(f"no {marker!r} within {timeout} s; got {output!r}")
            chunk = os.read(fd, 65536)
            if not chunk:
                err = process.stderr.read() if process.stderr else b""
                raise AssertionError(f"exited before {marker!r}: {output!r} {err!r}")
            output += chunk
    finally:
        selector.close()
    return output


@contextmanager
def server(*args: str, marker: bytes = b"try it: ") -> Iterator[Cli]:
    """Start ``enlace ARGS`` and wait until it printed ``marker`` (and the rest of that line)."""
    process = subprocess.Popen(
        [*ENLACE, *args], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        banner = read_until(process, marker)
        if not banner.endswith(b"\n"):
            banner += read_until(process, b"\n")
        yield Cli(process, banner)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(5)


class Terminal:
    """``enlace ARGS`` in a real pseudo-terminal (80x24), read back through a terminal emulator."""

    def __init__(self, tmp_path, *args: str) -> None:
        self.screen = pyte.Screen(80, 24)
        self.stream = pyte.ByteStream(self.screen)
        env = {
            **os.environ,
            "TERM": "xterm",
            "XDG_STATE_HOME": str(tmp_path),
            # pyte cannot answer prompt_toolkit's cursor-position request; real terminals do.
            "PROMPT_TOOLKIT_NO_CPR": "1",
        }
        env.pop("NO_COLOR", None)
        self.child = pexpect.spawn(ENLACE[0], [*ENLACE[1:], *args], env=env, dimensions=(24, 80))

    def lines(self) -> list[str]:
        return [line.rstrip() for line in self.screen.display]

    def wait_for(self, predicate: Callable[[list[str]], bool], timeout: float = 10) -> list[str]:
        """Read the terminal until ``predicate(lines)`` holds; fail after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while not predicate(self.lines()):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError("screen never matched:\n" + "\n".join(self.lines()))
            with contextlib.suppress(pexpect.TIMEOUT):
                self.stream.feed(self.child.read_nonblocking(65536, timeout=min(remaining, 0.5)))
        return self.lines()

    def type(self, text: str) -> None:
        self.child.send(text)

    def finish(self, timeout: float = 10) -> int:
        """Wait for the program to end (feeding what it prints to the screen); its exit code."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.stream.feed(self.child.read_nonblocking(65536, timeout=0.5))
            except pexpect.TIMEOUT:
                assert time.monotonic() < deadline, "the program did not exit"
            except pexpect.EOF:
                break
        self.child.close()
        return int(self.child.exitstatus)

    def close(self) -> None:
        self.child.terminate(force=True)
