"""Sans-I/O protocol code: bytes in, events out; no sockets, threads, loops or clocks.

Everything that parses, validates or keeps protocol state lives here, so both
runtimes (and any loop a user brings) share it and tests can drive it with
plain bytes.
"""

__all__: list[str] = []
