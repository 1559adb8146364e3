"""enlace: client-server networking, from the classic socket exercises to a chat.

The package is layered (see docs/reference.md):

* :mod:`enlace.protocol`: sans-I/O framing and parsing, shared by everything;
* :mod:`enlace.services`: what each service does, written once;
* :mod:`enlace.sync` and :mod:`enlace.asyncio`: two runtimes with the same names;
* :mod:`enlace.cli`: the ``enlace`` command.
"""

from enlace.exceptions import EnlaceError

__all__ = ["EnlaceError", "__version__"]

__version__ = "0.1.0"
