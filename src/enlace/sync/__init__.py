"""The thread runtime: blocking sockets, an accept thread and a thread per client.

Same names as :mod:`enlace.asyncio`; the same services run on both.
"""

from enlace.sync.client import Client
from enlace.sync.server import Server
from enlace.sync.udp import DatagramServer

__all__ = ["Client", "DatagramServer", "Server"]
