"""``fanout.py``'s numbers as text: its ratios to Redis, its table, the notes under it.

:func:`compute_ratios` divides each enlace row by the Redis row of the same load,
:func:`format_table` lays the rows out with :func:`harness.tables.render`, and
:func:`format_notes` and :func:`repeat_notes` explain every ``!``, skip and failure.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, TypeGuard

from harness.tables import pct, rate, render, us

__all__ = [
    "ANCHOR",
    "BUSY_CPU",
    "ENLACE",
    "cell_summary",
    "compute_ratios",
    "format_notes",
    "format_table",
    "good",
    "lost_of",
    "repeat_notes",
]

BUSY_CPU = 0.85  # a client using more of its core than this may have been the bottleneck
ENLACE = ("enlace-asyncio", "enlace-threads", "enlace-redis-hub")
ANCHOR = "redis"

Results = dict[str, dict[str, dict[str, Any]]]  # load key -> row name -> cell
Ratios = dict[str, dict[str, dict[str, float | None]]]


class LoadRow(Protocol):
    """What the tables need of ``fanout.py``'s ``Load``: a key and a row-group label."""

    @property
    def key(self) -> str: ...

    @property
    def label(self) -> str: ...


def lost_of(cell: dict[str, Any]) -> int:
    """Deliveries lost or out of order."""
    return int(cell.get("lost", 0)) + int(cell.get("reordered", 0))


def good(cell: dict[str, Any] | None) -> TypeGuard[dict[str, Any]]:
    """Whether a cell measured something (ran and delivered)."""
    return bool(cell and cell.get("ok") and cell.get("deliveries"))


def compute_ratios(loads: Sequence[LoadRow], results: Results) -> Ratios:
    """load -> enlace row -> delivered/s and p99 latency, each divided by Redis's.

    Only when both served the same number of receivers; otherwise the values are None.
    """
    ratios: Ratios = {}
    for load in loads:
        anchor = results.get(load.key, {}).get(ANCHOR)
        ratios[load.key] = {}
        for name in ENLACE:
            cell = results.get(load.key, {}).get(name)
            value: dict[str, float | None] = {"delivered_per_s": None, "p99": None}
            if (
                good(cell)
                and good(anchor)
                and cell["counted_receivers"] == anchor["counted_receivers"]
            ):
                value["delivered_per_s"] = cell["delivered_per_s"] / anchor["delivered_per_s"]
                if anchor["p99_us"] > 0:
                    value["p99"] = cell["p99_us"] / anchor["p99_us"]
            ratios[load.key][name] = value
    return ratios


def format_table(loads: Sequence[LoadRow], results: Results, ratios: Ratios) -> str:
    """The one table: a row group per load, a row per server."""
    header = [
        "load",
        "server",
        "receivers",
        "sent/s",
        "delivered/s",
        "p50",
        "p99",
        "max",
        "lost",
        "server CPU",
        "client CPU",
        "delivered/s vs redis",
        "p99 vs redis",
    ]
    rows = [header]
    for load in loads:
        first = True
        for name, cell in results.get(load.key, {}).items():
            row = [load.label if first else "", name]
            first = False
            if not cell.get("ok"):
                row += ["SKIPPED" if cell.get("skipped") else "FAILED"] + [""] * 10
                rows.append(row)
                continue
            row += [
                str(cell["counted_receivers"]),
                rate(cell["sent_per_s"]),
                rate(cell["delivered_per_s"]),
                us(cell["p50_us"]),
                us(cell["p99_us"]),
                us(cell["max_us"]),
                f"{lost_of(cell)} !" if lost_of(cell) else "0",
                pct(cell.get("server_cpu")),
                pct(cell.get("client_cpu")) + (" !" if cell["client_cpu"] > BUSY_CPU else ""),
            ]
            ratio = ratios.get(load.key, {}).get(name)
            if ratio is None:
                row += ["", ""]
            else:
                delivered, p99 = ratio["delivered_per_s"], ratio["p99"]
                row += [
                    "n/a" if delivered is None else f"{delivered:.2f}",
                    "n/a" if p99 is None else f"{p99:.2f}x",
                ]
            rows.append(row)
    return render(rows)


def format_notes(
    loads: Sequence[LoadRow], results: Results, receivers: int, threads_receivers: int
) -> list[str]:
    """The lines under the table: skips, failures, losses, a busy client, missing receivers."""
    notes = []
    for load in loads:
        for name, cell in results.get(load.key, {}).items():
            where = f"{name}, {load.key}"
            if not cell.get("ok"):
                what = "skipped" if cell.get("skipped") else "FAILED"
                notes.append(f"{what} {where}: {cell.get('error')}")
                continue
            if lost_of(cell):
                notes.append(
                    f"! {where}: {cell['lost']} deliveries lost ({cell['gaps']} skipped in "
                    f"sequence, {cell['missing_at_end']} missing when the drain ended after "
                    f"{cell['drain_seconds']:.1f} s), {cell['reordered']} out of order; "
                    f"{cell['closed_receivers']} receivers closed by the server"
                )
            for key in ("unexpected", "malformed", "conn_errors", "connect_failures"):
                if cell.get(key):
                    notes.append(f"! {where}: {key} {cell[key]}")
            if cell["client_cpu"] > BUSY_CPU:
                notes.append(
                    f"! {where}: the client used {cell['client_cpu']:.0%} of its core: the "
                    "receiving side may have been the bottleneck"
                )
            if cell["counted_receivers"] < cell["receivers"]:
                notes.append(
                    f"! {where}: only {cell['counted_receivers']} of {cell['receivers']} "
                    "receivers were ready"
                )
    if threads_receivers != receivers:
        notes.append(
            f"enlace-threads ran with {threads_receivers} receivers (--threads-receivers), "
            f"the others with {receivers}: its ratios to redis are not shown (n/a)"
        )
    return notes


def repeat_notes(
    loads: Sequence[LoadRow], runs: dict[str, dict[str, list[dict[str, Any]]]]
) -> list[str]:
    """With ``--repeat``: the cells where any run lost deliveries, not only the median one."""
    notes = []
    for load in loads:
        for name, cells in runs[load.key].items():
            bad = [c for c in cells if c.get("ok") and lost_of(c)]
            if len(cells) > 1 and bad:
                notes.append(
                    f"! {name}, {load.key}: {len(bad)} of {len(cells)} runs lost deliveries"
                )
    return notes


def cell_summary(cell: dict[str, Any]) -> str:
    """One run on one progress line (stderr)."""
    if not cell.get("ok"):
        return f"{'skipped' if cell.get('skipped') else 'FAILED'}: {cell.get('error')}"
    return (
        f"{rate(cell['delivered_per_s'])} deliveries/s, p50 {us(cell['p50_us'])}, "
        f"p99 {us(cell['p99_us'])}, lost {lost_of(cell)}, setup {cell['setup_seconds']:.1f} s, "
        f"drain {cell['drain_seconds']:.1f} s, server CPU {pct(cell.get('server_cpu'))}"
    )
