"""The ``--tls-cert`` and ``--tls-key`` options the peers share, and the context they build.

Every peer that serves TLS builds the same context as enlace's ``server_context``: Python's
default server context (``ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)``), TLS 1.2 at
least, the PEM certificate chain and its key.  Libraries that bring their own TLS (Twisted's,
on pyOpenSSL) take the same files.
"""

from __future__ import annotations

import argparse
import ssl

__all__ = ["add_tls_options", "server_context"]


def add_tls_options(parser: argparse.ArgumentParser) -> None:
    """``--tls-cert FILE --tls-key FILE``: serve TLS with this certificate chain and key."""
    parser.add_argument("--tls-cert", metavar="FILE", help="serve TLS with this PEM certificate")
    parser.add_argument("--tls-key", metavar="FILE", help="its PEM private key")


def server_context(args: argparse.Namespace) -> ssl.SSLContext | None:
    """The server context of ``--tls-cert/--tls-key``, or None for plain TCP."""
    if args.tls_cert is None:
        if args.tls_key is not None:
            raise SystemExit("--tls-key needs --tls-cert")
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(args.tls_cert, args.tls_key)
    return context
