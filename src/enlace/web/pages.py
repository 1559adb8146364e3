"""The pages the web server writes itself: the home page's service list and error pages.

The built-in site's ``index.html`` is a template: its ``<!-- services -->``
marker is replaced by a table of the services running beside the web server
(under ``enlace up``: every one, with its address and a line to try it).
Everything inserted is HTML-escaped.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources

from enlace.protocol.http import REASONS

__all__ = ["SITE", "ServiceInfo", "error_page", "render_home"]

#: The directory of the built-in site (HTML, CSS and JS shipped in the package).
SITE = str(resources.files("enlace.web") / "site")

_MARKER = "<!-- services -->"


@dataclass(frozen=True)
class ServiceInfo:
    """One running service, as the home page lists it."""

    name: str
    transport: str
    address: str
    try_it: str


def render_home(template: str, services: Sequence[ServiceInfo]) -> bytes:
    """The home page: ``template`` with its services marker replaced by a table."""
    if services:
        rows = "\n".join(
            f"<tr><td>{html.escape(s.name)}</td><td>{html.escape(s.transport)} "
            f"{html.escape(s.address)}</td><td><code>{html.escape(s.try_it)}</code></td></tr>"
            for s in services
        )
        table = (
            '<table class="services">\n<thead><tr><th>service</th><th>listens on</th>'
            f"<th>try it</th></tr></thead>\n<tbody>\n{rows}\n</tbody>\n</table>"
        )
    else:
        table = "<p>Only the web server runs here. <code>enlace up</code> runs every service.</p>"
    return template.replace(_MARKER, table).encode("utf-8")


def error_page(status: int, detail: str = "") -> bytes:
    """A small HTML page for an error status, with an optional escaped detail line."""
    reason = REASONS.get(status, "Error")
    extra = f"<p>{html.escape(detail)}</p>\n" if detail else ""
    return (
        '<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{status} {reason}</title>"
        '<link rel="stylesheet" href="/style.css"></head>\n'
        f'<body><main><h1>{status} {reason}</h1>\n{extra}<p><a href="/">enlace</a></p>'
        "</main></body></html>\n"
    ).encode()
