"""enlace's chat server without flood control, for the fan-out benchmark (``fanout.py``).

``enlace serve chat`` has no option to turn flood control off (a burst of 5 messages, then one
a second, per client), and a benchmark sender publishes thousands a second.  This runs the same
server the CLI does (``enlace.cli.runner.run_servers``: the same runtimes, event loop choice and
SIGTERM handling) with ``ChatService(flood_burst=None)``, and prints ``listening on HOST:PORT``
once it accepts connections::

    python benchmarks/chat_server.py --port 0 --runtime asyncio --max-connections 1100

The open-files limit is raised to its hard limit when ``--max-connections`` needs more.
"""

from __future__ import annotations

import argparse
import atexit
import sys

from harness.servers import raise_open_files  # this script's folder is on sys.path

from enlace.cli.runner import Launch, loop_name, run_servers
from enlace.limits import IDLE_TIMEOUT
from enlace.services.chat import ChatService


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python benchmarks/chat_server.py",
        description="enlace's chat server with flood control off (for benchmarks).",
    )
    parser.add_argument("--host", default="127.0.0.1", help="default 127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="default 0: a free port")
    parser.add_argument("--runtime", choices=("asyncio", "threads"), default="asyncio")
    parser.add_argument(
        "--loop", choices=("auto", "asyncio", "uvloop"), default="auto", help="default auto"
    )
    parser.add_argument(
        "--max-connections", type=int, default=2048, metavar="N", help="default 2048"
    )
    parser.add_argument(
        "--hub", metavar="URL", help="share the chat through this Redis (redis://HOST:PORT/DB)"
    )
    args = parser.parse_args(argv)
    enough, said = raise_open_files(args.max_connections + 64)
    if not enough:
        print(f"chat_server: warning: {said}", file=sys.stderr, flush=True)
    if args.hub:
        from enlace.services.redis_hub import RedisHub  # noqa: PLC0415 - only this row needs Redis

        hub = RedisHub(args.hub).start()
        atexit.register(hub.close)
        service = ChatService(flood_burst=None, hub=hub)
    else:
        service = ChatService(flood_burst=None)
    launch = Launch(
        "chat",
        service,
        args.host,
        args.port,
        max_connections=args.max_connections,
        idle_timeout=IDLE_TIMEOUT,
        drain_timeout=2.0,
    )
    runtime = args.runtime
    if runtime == "asyncio":
        runtime = f"asyncio/{loop_name(args.loop)}"

    def announce(started: list[tuple[Launch, tuple[str, int]]]) -> None:
        for _, (host, port) in started:
            print(f"chat listening on {host}:{port} ({runtime} runtime)", flush=True)

    return run_servers([launch], args.runtime, announce, loop=args.loop)


if __name__ == "__main__":
    sys.exit(main())
