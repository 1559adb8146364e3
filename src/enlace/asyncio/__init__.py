"""The asyncio runtime: :class:`asyncio.Protocol` servers on the running event loop.

Same names as :mod:`enlace.sync`; the same services run on both.
"""

from enlace.asyncio.client import Client
from enlace.asyncio.server import Server
from enlace.asyncio.udp import DatagramServer

__all__ = ["Client", "DatagramServer", "Server"]
