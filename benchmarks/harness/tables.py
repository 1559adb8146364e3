"""Numbers as text: the cells, ratio columns and tables the benchmarks print, and their notes.

``run.py`` prints :func:`format_tables` (throughput with ratio columns, fairness, TLS cost),
then :func:`format_loadgen_cpu` and :func:`format_notes`; ``harness.fanout_tables`` and
``web.py`` lay out their own rows with :func:`render` and the number formats here.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from harness.suites import Config, Suite

__all__ = [
    "ERROR_COUNTS",
    "LOADGEN_BUSY",
    "STOLEN",
    "cell_summary",
    "compute_ratios",
    "compute_tls_cost",
    "format_loadgen_cpu",
    "format_notes",
    "format_round_ratios",
    "format_tables",
    "median_run",
    "ok_cell",
    "pct",
    "rate",
    "render",
    "robbed",
    "round_ratios",
    "us",
]

ERROR_COUNTS = ("connect_failures", "conn_errors", "mismatches", "unexpected_frames")
LOADGEN_BUSY = 0.85  # a load generator using more of its core may be the bottleneck
STOLEN = 0.02  # a cell during which the hypervisor took more of the machine is suspect


def rate(rps: float) -> str:
    """A count per second, short: 950, 17.8k, 1.23M."""
    if rps >= 1e6:
        return f"{rps / 1e6:.2f}M"
    if rps >= 1e3:
        return f"{rps / 1e3:.1f}k"
    return f"{rps:.0f}"


def us(value: float) -> str:
    """Microseconds, short: 77us, 1.2ms, 35ms, 1.5s."""
    if value >= 10_000_000:
        return f"{value / 1e6:.0f}s"
    if value >= 1_000_000:
        return f"{value / 1e6:.1f}s"
    if value >= 10_000:
        return f"{value / 1000:.0f}ms"
    if value >= 1000:
        return f"{value / 1000:.1f}ms"
    return f"{value:.0f}us"


def robbed(run: dict[str, Any]) -> bool:
    """Whether the hypervisor took more than :data:`STOLEN` of the machine during ``run``."""
    return (run.get("steal") or 0.0) > STOLEN


def ok_cell(
    results: dict[str, dict[str, Any]], server: str, config: Config
) -> dict[str, Any] | None:
    """The cell of ``server`` in ``config`` when it measured something, else None."""
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
            top = ok_cell(results, ratio.numerator, config)
            cells = {name: ok_cell(results, name, config) for name in ratio.denominators}
            peers = [(cell["rps"], name) for name, cell in cells.items() if cell]
            if top and peers:
                best_rps, best = max(peers)
                value = {"value": top["rps"] / best_rps, "versus": best}
            else:
                value = {"value": None, "versus": None}
            ratios[ratio.label][config.key] = value
    return ratios


def round_ratios(
    suite: Suite, configs: list[Config], results: dict[str, dict[str, Any]]
) -> dict[str, dict[str, list[float]]]:
    """Each ratio column's value in every round in which all its servers measured something
    (the runs that lost more than :data:`STOLEN` to the hypervisor left out).

    The cells' medians can come from different rounds; these per-round values show how far
    one round can stray from the median ratio, that is how much of a ratio is noise.
    """

    def runs(name: str, config: Config) -> list[dict[str, Any]]:
        cell = results.get(name, {}).get("cells", {}).get(config.key) or {}
        return list(cell.get("runs") or [cell])

    rounds: dict[str, dict[str, list[float]]] = {}
    for ratio in suite.ratios:
        rounds[ratio.label] = {}
        for config in configs:
            tops = runs(ratio.numerator, config)
            peers = [runs(name, config) for name in ratio.denominators]
            values = []
            for n, top in enumerate(tops):
                rates = [p[n]["rps"] for p in peers if n < len(p) and _measured(p[n])]
                if _measured(top) and rates:
                    values.append(top["rps"] / max(rates))
            rounds[ratio.label][config.key] = values
    return rounds


def _measured(run: dict[str, Any]) -> bool:
    """A run that measured something, without the hypervisor taking much of the machine."""
    return bool(run.get("ok") and run.get("requests")) and not robbed(run)


def format_round_ratios(configs: list[Config], rounds: dict[str, dict[str, list[float]]]) -> str:
    """The ratio columns' lowest, median and highest value over the rounds (two or more)."""
    rows = [["ratio per round: min / median / max", *rounds]]
    for config in configs:
        row = [config.label]
        for per_config in rounds.values():
            values = sorted(per_config.get(config.key, []))
            if len(values) < 2:
                row.append("-")
                continue
            median = values[(len(values) - 1) // 2]
            row.append(f"{values[0]:.2f} / {median:.2f} / {values[-1]:.2f}")
        rows.append(row)
    return render(rows) if any(c != "-" for row in rows[1:] for c in row[1:]) else ""


def render(rows: list[list[str]], *, markdown: bool = False) -> str:
    """Rows of cells as a table, the first row its header.

    Plain: columns aligned (the first to the left, the others to the right), a rule under
    the header.  ``markdown``: a Markdown table, for pasting into documents.
    """
    if markdown:
        lines = [f"| {' | '.join(row)} |" for row in rows]
        lines.insert(1, "|" + "---|" * len(rows[0]))
        return "\n".join(lines)
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


def pct(value: float | None) -> str:
    """A share as a percentage; ``-`` when unknown (None or negative)."""
    return "-" if value is None or value < 0 else f"{value:.0%}"


def median_run(
    runs: list[dict[str, Any]],
    key: Callable[[dict[str, Any]], Any],
    good: Callable[[dict[str, Any]], bool] = lambda run: bool(run.get("ok")),
) -> dict[str, Any]:
    """The good run ranked in the middle by ``key`` (the lower middle one for an even count).

    With more than one run, every run is kept in it as ``runs``; with no good run, the
    last one is returned.
    """
    ranked = sorted((r for r in runs if good(r)), key=key)
    if not ranked:
        return runs[-1]
    chosen = dict(ranked[(len(ranked) - 1) // 2])
    if len(runs) > 1:
        chosen["runs"] = runs
    return chosen


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
            text = rate(cell["rps"])
            if config.latency:
                text += f" {us(cell['p50_us'])}/{us(cell['p99_us'])}"
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
    out = [render(rows)]

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
        out.append(render(fair))

    cost = compute_tls_cost(configs, results)
    if cost:
        table = [["TLS cost: TLS / plain requests/s", *names]]
        for key, per_server in cost.items():
            label = next(c.label for c in configs if c.key == key)
            values = [per_server.get(name) for name in names]
            table.append([label, *("-" if v is None else f"{v:.2f}" for v in values)])
        out.append(render(table))
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
            tls_cell, plain_cell = ok_cell(results, name, config), ok_cell(results, name, plain)
            value = tls_cell["rps"] / plain_cell["rps"] if tls_cell and plain_cell else None
            cost[config.key][name] = value
    return cost


def format_loadgen_cpu(configs: list[Config], results: dict[str, dict[str, Any]]) -> str:
    """The load generator's highest CPU share in each row, and its TLS version and cipher."""
    parts, tls = [], ""
    for config in configs:
        cells = [ok_cell(results, name, config) for name in results]
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
            if cell.get("ok") and robbed(cell):
                notes.append(
                    f"! {name}, {config.label}: the hypervisor took {cell['steal']:.0%} of the "
                    "machine's CPU time during the median run; its number is suspect"
                )
            if cell.get("ok") and cell.get("cpu", 0.0) > LOADGEN_BUSY:
                notes.append(
                    f"! {name}, {config.label}: the load generator used {cell['cpu']:.0%} of its "
                    "core; the number may be the load generator's limit, not the server's"
                )
    for name, reason in skipped.items():
        notes.append(f"skipped {name}: {reason}")
    return "\n".join(notes)


def cell_summary(result: dict[str, Any]) -> str:
    """One cell in a progress line: requests/s, latency, the load generator's CPU, errors."""
    if not result.get("ok"):
        return f"FAILED: {result.get('error')}"
    text = f"{rate(result['rps'])} req/s, p50 {us(result['p50_us'])}, p99 {us(result['p99_us'])}"
    if "cpu" in result:
        text += f", load generator CPU {result['cpu']:.0%}"
    if (result.get("steal") or 0.0) >= STOLEN / 2:
        text += f", {result['steal']:.0%} stolen by the hypervisor"
    if result.get("errors"):
        text += f", {result['errors']} errors"
    return text
