"""Builds the optional C module ``enlace.speedups``; everything else is in pyproject.toml.

``ENLACE_BUILD_EXTENSION``: ``yes`` fails the install when the module cannot be
compiled (CI sets it), ``no`` skips it; by default it is built when a C compiler
is present, and enlace runs on its pure-Python twins otherwise
(enlace/protocol/fastpath.py).
"""

import os

from setuptools import Extension, setup

choice = os.environ.get("ENLACE_BUILD_EXTENSION", "auto").lower()
if choice not in ("yes", "no", "auto"):
    raise SystemExit(f"ENLACE_BUILD_EXTENSION must be yes, no or auto, not {choice!r}")

extensions = []
if choice != "no":
    extensions.append(
        Extension("enlace.speedups", ["src/enlace/speedups.c"], optional=choice == "auto")
    )

setup(ext_modules=extensions)
