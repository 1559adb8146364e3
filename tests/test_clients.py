"""enlace.sync.Client and enlace.asyncio.Client: one behaviour suite for both.

Each test runs twice: the thread client against the thread server, and the
asyncio client against the asyncio server, with the same assertions.
"""

from __future__ import annotations

import asyncio
import socket
import threading

import pytest

import enlace.asyncio
import enlace.sync
from enlace.exceptions import ConnectionClosed, ConnectionRefused, RequestError, Timeout
from enlace.services.commands import Context
from enlace.services.message import MessageService


def make_service() -> tuple[MessageService, threading.Event]:
    service = MessageService()
    release = threading.Event()

    @service.command
    def shout(ctx: Context, text: str) -> str:
        ctx.service.broadcast({"event": "shout", "text": text})
        return "sent"

    @service.command
    async def stuck() -> str:
        await asyncio.get_running_loop().run_in_executor(None, release.wait, 10)
        return "released"

    return service, release


def test_request_and_command(serve, runtime):
    server = serve(make_service()[0])

    if runtime == "threads":
        with enlace.sync.Client(*server.address) as client:
            assert client.request("upper", "hola") == "HOLA"
            assert client.command("/upper hola servidor") == "HOLA SERVIDOR"
            assert client.request("ping") == "pong"
    else:

        async def main() -> None:
            async with enlace.asyncio.Client(*server.address) as client:
                assert await client.request("upper", "hola") == "HOLA"
                assert await client.command("/upper hola servidor") == "HOLA SERVIDOR"
                assert await client.request("ping") == "pong"

        asyncio.run(main())


def test_error_replies_raise_typed_errors(serve, runtime):
    server = serve(make_service()[0])

    def check(error: RequestError, code: str) -> None:
        assert error.code == code
        assert error.message

    if runtime == "threads":
        with enlace.sync.Client(*server.address) as client:
            with pytest.raises(RequestError) as caught:
                client.request("nope")
            check(caught.value, "unknown_command")
            with pytest.raises(RequestError) as caught:
                client.request("upper", 42)
            check(caught.value, "bad_arguments")
            with pytest.raises(RequestError) as caught:
                client.command("hola")
            check(caught.value, "no_chat")
            assert client.request("ping") == "pong"
    else:

        async def main() -> None:
            async with enlace.asyncio.Client(*server.address) as client:
                with pytest.raises(RequestError) as caught:
                    await client.request("nope")
                check(caught.value, "unknown_command")
                with pytest.raises(RequestError) as caught:
                    await client.request("upper", 42)
                check(caught.value, "bad_arguments")
                assert await client.request("ping") == "pong"

        asyncio.run(main())


def test_concurrent_requests_are_matched_by_id(serve, runtime):
    server = serve(make_service()[0])
    words = [f"palabra{i}" for i in range(200)]
    if runtime == "threads":
        with enlace.sync.Client(*server.address) as client:
            results: dict[int, str] = {}

            def ask(index: int) -> None:
                results[index] = client.request("upper", words[index])

            threads = [threading.Thread(target=ask, args=(i,)) for i in range(len(words))]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(10)
            assert [results[i] for i in range(len(words))] == [w.upper() for w in words]
    else:

        async def main() -> list[str]:
            async with enlace.asyncio.Client(*server.address) as client:
                return list(await asyncio.gather(*(client.request("upper", w) for w in words)))

        assert asyncio.run(main()) == [w.upper() for w in words]


def test_pushed_events_interleave_with_replies(serve, runtime):
    server = serve(make_service()[0])
    if runtime == "threads":
        seen: list[dict] = []
        arrived = threading.Event()

        def on_event(event: dict) -> None:
            seen.append(event)
            arrived.set()

        with (
            enlace.sync.Client(*server.address, on_event=on_event) as listener,
            enlace.sync.Client(*server.address) as shouter,
        ):
            assert listener.request("ping") == "pong"
            assert shouter.request("shout", "hola") == "sent"
            assert arrived.wait(5)
            assert seen == [{"event": "shout", "text": "hola"}]
            # The shouter had no callback: its own copy waits in the iterator.
            assert next(shouter.events(timeout=5)) == {"event": "shout", "text": "hola"}
    else:

        async def main() -> None:
            async with (
                enlace.asyncio.Client(*server.address) as listener,
                enlace.asyncio.Client(*server.address) as shouter,
            ):
                assert await listener.request("ping") == "pong"
                assert await shouter.request("shout", "hola") == "sent"
                events = listener.events(timeout=5)
                assert await anext(events) == {"event": "shout", "text": "hola"}

        asyncio.run(main())


def test_a_request_times_out_and_other_connections_carry_on(serve, runtime):
    service, release = make_service()
    server = serve(service)
    try:
        if runtime == "threads":
            with (
                enlace.sync.Client(*server.address) as client,
                pytest.raises(Timeout, match="no reply to /stuck"),
            ):
                client.request("stuck", timeout=0.2)
            with enlace.sync.Client(*server.address) as other:
                assert other.request("ping") == "pong"
        else:

            async def main() -> None:
                async with enlace.asyncio.Client(*server.address) as client:
                    with pytest.raises(Timeout, match="no reply to /stuck"):
                        await client.request("stuck", timeout=0.2)
                async with enlace.asyncio.Client(*server.address) as other:
                    assert await other.request("ping") == "pong"

            asyncio.run(main())
    finally:
        release.set()


def test_pending_requests_fail_when_the_connection_closes(serve, runtime):
    service, release = make_service()
    server = serve(service)
    try:
        if runtime == "threads":
            with enlace.sync.Client(*server.address) as client:
                failure: list[BaseException] = []

                def wait_for_stuck() -> None:
                    try:
                        client.request("stuck")
                    except ConnectionClosed as exc:
                        failure.append(exc)

                waiter = threading.Thread(target=wait_for_stuck)
                waiter.start()
                server.shutdown(0.0)  # the server goes away with the request pending
                # Not when the handler gives up (10 s): a thread held up in a handler is
                # cut at the end of the shutdown, so its client learns it is over.
                waiter.join(6)
                assert not waiter.is_alive()
                assert failure and isinstance(failure[0], ConnectionClosed)
                assert client.closed
                with pytest.raises(ConnectionClosed):
                    client.request("ping")
        else:

            async def main() -> None:
                async with enlace.asyncio.Client(*server.address) as client:
                    pending = asyncio.ensure_future(client.request("stuck"))
                    await asyncio.get_running_loop().run_in_executor(None, server.shutdown, 0.0)
                    with pytest.raises(ConnectionClosed):
                        await pending
                    assert client.closed
                    with pytest.raises(ConnectionClosed):
                        await client.request("ping")

            asyncio.run(main())
    finally:
        release.set()


def test_a_busy_server_explains_why_the_connection_closed(serve, runtime):
    server = serve(MessageService(), max_connections=1)
    with enlace.sync.Client(*server.address) as first:
        assert first.request("ping") == "pong"
        if runtime == "threads":
            with (
                enlace.sync.Client(*server.address) as second,
                pytest.raises(ConnectionClosed, match="ERR busy"),
            ):
                second.request("ping")
        else:

            async def main() -> None:
                async with enlace.asyncio.Client(*server.address) as second:
                    with pytest.raises(ConnectionClosed, match="ERR busy"):
                        await second.request("ping")

            asyncio.run(main())


def test_connection_refused_is_typed(runtime):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    if runtime == "threads":
        with pytest.raises(ConnectionRefused, match=f"cannot connect to 127.0.0.1:{port}"):
            enlace.sync.Client("127.0.0.1", port)
    else:

        async def main() -> None:
            with pytest.raises(ConnectionRefused, match=f"cannot connect to 127.0.0.1:{port}"):
                await enlace.asyncio.Client.connect("127.0.0.1", port)

        asyncio.run(main())


def test_unconsumed_events_are_bounded_and_counted(serve, runtime):
    server = serve(make_service()[0])
    if runtime == "threads":
        with enlace.sync.Client(*server.address, max_events=3) as client:
            for i in range(5):
                client.request("shout", str(i))
            assert client.request("ping") == "pong"  # all 5 pushes arrived before this reply
            assert client.dropped_events == 2
            assert [e["text"] for e in client.events(timeout=0)] == ["2", "3", "4"]
    else:

        async def main() -> None:
            async with enlace.asyncio.Client(*server.address, max_events=3) as client:
                for i in range(5):
                    await client.request("shout", str(i))
                assert await client.request("ping") == "pong"
                assert client.dropped_events == 2
                assert [e["text"] async for e in client.events(timeout=0)] == ["2", "3", "4"]

        asyncio.run(main())
