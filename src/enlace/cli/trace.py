"""``--trace``: print every frame or line as it crosses the wire, for learners.

One line per payload on standard error: direction, peer, size, then the text,
or a hex dump when the payload is not printable UTF-8::

    <- 127.0.0.1:51234  19 B  /upper hola servidor
    -> 127.0.0.1:51234  13 B  HOLA SERVIDOR
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable

from enlace.addresses import format_address

__all__ = ["describe_payload", "print_trace", "tracer_for_peer"]

_SHOWN = 200  # characters (or bytes, in hex) of a payload shown in one trace line
_lock = threading.Lock()  # many connection threads trace at once


def describe_payload(payload: bytes) -> str:
    """Printable text as it is (escaped), anything else as hex."""
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError:
        text = None
    if text is not None and all(ch.isprintable() or ch in "\n\t" for ch in text):
        shown = text[:_SHOWN].replace("\n", "\\n").replace("\t", "\\t")
        return shown + ("…" if len(text) > _SHOWN else "")
    head = payload[: _SHOWN // 2]
    return "hex " + head.hex(" ") + (" …" if len(payload) > len(head) else "")


def print_trace(direction: str, peer: tuple[str, int], payload: bytes) -> None:
    """Server side: ``in`` is from the client (<-), ``out`` is to it (->)."""
    arrow = "<-" if direction == "in" else "->"
    line = f"{arrow} {format_address(*peer)}  {len(payload)} B  {describe_payload(payload)}"
    with _lock:
        print(line, file=sys.stderr, flush=True)


def tracer_for_peer(peer: tuple[str, int]) -> Callable[[str, bytes], None]:
    """Client side: the same lines, for the one server a client talks to."""
    return lambda direction, payload: print_trace(direction, peer, payload)
