"""What each service does, written once and run by either runtime."""

from enlace.services.base import DatagramService, StreamHandler, StreamService, Transport
from enlace.services.classic import EchoService, GreetService, UdpEchoService, UpperService

__all__ = [
    "DatagramService",
    "EchoService",
    "GreetService",
    "StreamHandler",
    "StreamService",
    "Transport",
    "UdpEchoService",
    "UpperService",
]
