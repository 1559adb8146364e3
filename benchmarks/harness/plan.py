"""How ``run.py`` runs a plan: every server up at once, the cells interleaved, all stopped.

:func:`run_plan` starts the plain instances of the chosen servers (and their TLS instances
for the TLS rows, with a certificate made for the run), runs each configuration against each
server in turn, as many rounds as ``repeat`` says, keeps each cell's median run, and stops
every server by its PID.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.loadgen import build_loadgen, build_loadgen_tls, run_loadgen
from harness.servers import (
    RunningServer,
    Server,
    cpu_seconds,
    make_tls_files,
    missing_modules,
    start_server,
    steal_seconds,
    stop_server,
)
from harness.suites import Config, Suite
from harness.tables import cell_summary, median_run, robbed

__all__ = ["Plan", "run_plan"]


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
    #: Times a run may be made again when the hypervisor robbed it (harness.tables.robbed).
    retry_stolen: int = 0


def _warn_busy_when_idle(running: list[RunningServer]) -> None:
    """All servers share one core, so one that spins while idle would slow the others."""
    before = {r.label: cpu_seconds(r.proc.pid) for r in running}
    time.sleep(0.5)
    for r in running:
        start, end = before[r.label], cpu_seconds(r.proc.pid)
        if start is not None and end is not None and end - start > 0.05:
            print(
                f"warning: {r.label} used {(end - start) / 0.5:.0%} of a core while idle; "
                "it slows every server measured with it",
                file=sys.stderr,
            )


def _start_all(
    plan: Plan,
    tls_files: tuple[Path, Path] | str | None,
    skipped: dict[str, str],
    running: list[RunningServer],
) -> None:
    """Start the plain instances the plain rows need and the TLS ones the TLS rows need.

    Each one is added to ``running`` as soon as it serves, so that the caller stops every
    server started even when starting the next one is interrupted (Ctrl-C).
    """
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
            _start_all(plan, tls_files, skipped, running)
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
            entry["cells"][key] = _median(cell_runs)
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
                    for attempt in range(plan.retry_stolen + 1):
                        if attempt:
                            print(
                                f"       {server.server.name:17} {config.label:31} again: "
                                f"{result['steal']:.0%} stolen by the hypervisor",
                                file=sys.stderr,
                            )
                        stolen, started = steal_seconds(), time.monotonic()
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
                        result["steal"] = _steal_share(stolen, time.monotonic() - started)
                        result["attempts"] = attempt + 1
                        if not result.get("ok") or not robbed(result):
                            break
                        time.sleep(0.05)  # as between cells: closed connections noticed
                    if not result.get("ok") and (failure := server.failure()):
                        result["error"] = f"{result.get('error')} ({failure})"
                runs[server.label][config.key].append(result)
                summary = cell_summary(result)
                print(
                    f"[{done:2}/{total}] {server.server.name:17} {config.label:31} {summary}",
                    file=sys.stderr,
                )
                time.sleep(0.05)  # let the server notice the closed connections
    return runs


def _steal_share(before: float | None, elapsed: float) -> float | None:
    """The share of the machine's CPU time stolen by the hypervisor since ``before``."""
    after = steal_seconds()
    if before is None or after is None or elapsed <= 0:
        return None
    return round((after - before) / (elapsed * (os.cpu_count() or 1)), 4)


def _median(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The median run by requests/s, of the runs the hypervisor left alone if there are any.

    A run that lost a fifth of the machine measures the host, not the server.
    """
    spared = any(run.get("ok") and not robbed(run) for run in runs)
    return median_run(
        runs,
        key=lambda run: float(run["rps"]),
        good=lambda run: bool(run.get("ok")) and not (spared and robbed(run)),
    )
