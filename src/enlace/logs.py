"""The log lines both runtimes write, so they read the same whichever one serves.

enlace logs through :mod:`logging` under the ``enlace`` logger and never
configures logging itself; the ``enlace`` command does, for its own process.
One INFO line per connection (never per message: logging costs more than
echoing a small frame).
"""

from __future__ import annotations

import logging

from enlace.addresses import format_address

__all__ = ["log_closed", "log_handshake_failed", "log_refused", "logger_for", "lost_reason"]


def logger_for(service_name: str) -> logging.Logger:
    """The logger of one service, ``enlace.<name>``."""
    return logging.getLogger(f"enlace.{service_name}")


def lost_reason(exc: BaseException) -> str:
    """The reason :func:`log_closed` gives for a connection lost to ``exc``."""
    return f"connection lost: {getattr(exc, 'strerror', None) or exc}"


def log_closed(
    logger: logging.Logger,
    peer: tuple[str, int],
    *,
    bytes_in: int,
    bytes_out: int,
    duration: float,
    reason: str,
) -> None:
    """One line when a connection ends: who, how much, how long, and why."""
    logger.info(
        "%s closed (%s): in %d B, out %d B, %.3f s",
        format_address(*peer),
        reason,
        bytes_in,
        bytes_out,
        duration,
    )


def log_refused(logger: logging.Logger, peer: tuple[str, int], reason: str) -> None:
    """One line when a connection is turned away."""
    logger.warning("%s refused: %s", format_address(*peer), reason)


def log_handshake_failed(logger: logging.Logger, peer: tuple[str, int], reason: str) -> None:
    """One INFO line when a TLS handshake fails: clients get this wrong, servers need not shout."""
    logger.info("%s TLS handshake failed: %s", format_address(*peer), reason)
