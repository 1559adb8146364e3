"""The C programs that make the load: build them with ``cc``, run one, read its JSON line.

``loadgen/loadgen.c`` is built into ``.build/loadgen`` and, with OpenSSL, into
``.build/loadgen-tls`` (OpenSSL's headers are installed with ``apt-get`` when missing);
``fanout.py`` builds ``loadgen/fanout.c`` with :func:`build_c_program` too.  Both include
``loadgen/common.h``: a program is rebuilt when it or that header changes.  Each program
prints one JSON line of results; :func:`run_json_program` runs one within a time bound and
returns that line, or ``ok: false`` and why there is none.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from harness import BENCHMARKS, BUILD, REPO
from harness.servers import TLS_SERVER_NAME, last_line
from harness.suites import Config, Suite

__all__ = [
    "LOADGEN",
    "LOADGEN_SLACK",
    "LOADGEN_SRC",
    "LOADGEN_TLS",
    "build_c_program",
    "build_loadgen",
    "build_loadgen_tls",
    "run_json_program",
    "run_loadgen",
]

LOADGEN_SRC = BENCHMARKS / "loadgen" / "loadgen.c"
LOADGEN = BUILD / "loadgen"
LOADGEN_TLS = BUILD / "loadgen-tls"
LOADGEN_SLACK = 15.0  # seconds allowed beyond the load generator's own time bound


def _up_to_date(source: Path, target: Path) -> bool:
    """Whether ``target`` is newer than ``source`` and the headers beside it (``common.h``)."""
    if not target.exists():
        return False
    inputs = [source, *source.parent.glob("*.h")]
    return target.stat().st_mtime >= max(path.stat().st_mtime for path in inputs)


def build_c_program(
    source: Path, target: Path, what: str, flags: tuple[str, ...] = (), libs: tuple[str, ...] = ()
) -> Path:
    """Compile ``source`` into ``target`` unless it is up to date; return ``target``."""
    if _up_to_date(source, target):
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
            sys.exit(f"error: {' '.join(cmd)} failed: {last_line(done.stderr)}; {hint}")


def build_loadgen_tls() -> Path:
    """Compile ``loadgen.c`` with TLS into ``.build/loadgen-tls``; install libssl-dev if needed."""
    if not _up_to_date(LOADGEN_SRC, LOADGEN_TLS) and not _openssl_headers():
        _install_libssl_dev()
    return build_c_program(
        LOADGEN_SRC,
        LOADGEN_TLS,
        "the TLS load generator",
        ("-DLOADGEN_TLS",),
        ("-lssl", "-lcrypto"),
    )


def run_json_program(
    cmd: list[str], bound: float, what: str, *, stderr_lines: int = 5
) -> dict[str, Any]:
    """Run ``cmd`` for at most ``bound`` seconds; return its last JSON line, parsed.

    ``what`` names the program in errors.  When there is no such line, ``ok`` is false
    and ``error`` says why.  What it printed on stderr (its first ``stderr_lines``
    lines) is kept as ``stderr``.
    """
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=bound, check=False)
    except subprocess.TimeoutExpired:
        return {"ok": False, "error": f"{what} did not finish in {bound:.0f} s"}
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if not lines:
        detail = last_line(done.stderr) or f"exit code {done.returncode}"
        return {"ok": False, "error": f"{what} printed no result: {detail}"}
    try:
        result: dict[str, Any] = json.loads(lines[-1])
    except json.JSONDecodeError:
        return {"ok": False, "error": f"{what} printed bad JSON: {lines[-1][:200]}"}
    if done.stderr.strip():
        result["stderr"] = done.stderr.strip().splitlines()[:stderr_lines]
    return result


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
    result = run_json_program(cmd, bound, "the load generator")
    if "stderr" in result and not result.get("ok"):  # e.g. OpenSSL's reason for a failed handshake
        result["error"] = f"{result.get('error')}: {result['stderr'][0]}"
    return result
