"""The chat's AI assistant (/ask) over real sockets, on every runtime.

No model runs here: the endpoint is tests/services/fake_chat_completions.py, a
local HTTP server that speaks the Chat Completions wire format (streaming
included) and is scripted by each test. Fragments of an answer wait for events
the test sets once it has seen the fragment before, so the tests show that the
answer is pushed as it arrives without sleeping to find out.
"""

from __future__ import annotations

import json
import re
import threading

import pytest

from enlace.services.assistant import AssistantConfig, AssistantConfigError, install_assistant
from enlace.services.chat import ChatService
from tests.services.fake_chat_completions import FakeChatCompletions, Reply, refusing_url
from tests.services.people import Person


@pytest.fixture
def endpoint():
    with FakeChatCompletions() as fake:
        yield fake


def config(url: str, **limits) -> AssistantConfig:
    # Short timeouts: a test that goes wrong fails in seconds, not minutes.
    options = {"connect_timeout": 2.0, "read_timeout": 2.0, "total_timeout": 5.0, **limits}
    return AssistantConfig(url, "test-model", "sk-test", **options)


def chat(serve, ai: AssistantConfig | None, **options) -> tuple[str, int]:
    service = ChatService(flood_burst=None)
    install_assistant(service, ai, **options)
    return serve(service).address


def test_everyone_sees_the_question_then_the_answer_streamed_to_json_clients(serve, endpoint):
    first, second = threading.Event(), threading.Event()
    endpoint.reply = Reply(
        steps=["Un socket", first, " es un extremo", second, " de una conexión."]
    )
    address = chat(serve, config(endpoint.url))
    ana, bob = Person(address, "ana"), Person(address, "bob")
    carol = Person(address, "carol", json_form=True)
    ana.send("/ask ¿qué es un socket?")
    assert bob.until("socket?")[-1] == "[general] ana: ¿qué es un socket?"
    question = carol.event("message")
    assert (question["from"], question["text"]) == ("ana", "¿qué es un socket?")
    delta = carol.json()
    assert (delta["event"], delta["room"], delta["delta"]) == ("assistant", "general", "Un socket")
    # Meanwhile the chat goes on: the endpoint is held, nobody else waits for it.
    bob.send("/ping")
    assert bob.line() == "pong"
    bob.send("sigo aquí")
    assert carol.event("message")["text"] == "sigo aquí"
    first.set()
    assert carol.json() | {"ts": 0} == delta | {"delta": " es un extremo", "ts": 0}
    second.set()
    assert carol.json()["delta"] == " de una conexión."
    answer = carol.json()
    assert answer["event"] == "message"
    assert (answer["from"], answer["stream"]) == ("assistant", delta["stream"])
    assert answer["text"] == "Un socket es un extremo de una conexión."
    # Text clients see the final message only, no fragments, and the asker no reply line.
    lines = bob.until("[general] assistant:")
    assert lines == [
        "[general] bob: sigo aquí",
        "[general] assistant: Un socket es un extremo de una conexión.",
    ]
    assert ana.until("[general] assistant:")[-1] == lines[-1]
    ana.send("/ping")
    assert ana.line() == "pong"
    for person in (ana, bob, carol):
        person.close()


def test_a_json_asker_gets_the_answer_as_its_reply_once_complete(serve, endpoint):
    endpoint.reply = Reply(steps=["Hola, ", "soy el asistente."])
    address = chat(serve, config(endpoint.url))
    carol = Person(address, "carol", json_form=True)
    asked = carol.request("ask", "¿quién eres?")
    seen = []
    while not seen or "id" not in seen[-1]:
        seen.append(carol.json())
    question, *deltas, answer, reply = seen
    assert (question["event"], question["text"]) == ("message", "¿quién eres?")
    assert {event["event"] for event in deltas} == {"assistant"}
    assert "".join(event["delta"] for event in deltas) == "Hola, soy el asistente."
    assert (answer["event"], answer["text"]) == ("message", "Hola, soy el asistente.")
    assert reply == {"id": asked, "ok": True, "result": "Hola, soy el asistente."}
    carol.close()


def test_the_request_has_the_model_the_key_and_the_rooms_recent_messages(serve, endpoint):
    address = chat(serve, config(endpoint.url, max_context=3), ask_interval=None)
    ana, bob = Person(address, "ana"), Person(address, "bob")
    ana.send("hola")
    bob.until("hola")
    bob.send("buenas")
    ana.until("buenas")
    endpoint.reply = Reply(steps=["Respuesta uno."])
    ana.send("/ask primera")
    ana.until("Respuesta uno.")
    bob.send("gracias")
    ana.until("gracias")
    endpoint.reply = Reply(steps=["Respuesta dos."])
    ana.send("/ask segunda")
    ana.until("Respuesta dos.")
    first, second = endpoint.requests
    assert first.path == "/v1/chat/completions"
    assert first.headers["authorization"] == "Bearer sk-test"
    assert first.headers["content-type"] == "application/json"
    assert first.body["model"] == "test-model"
    assert first.body["stream"] is True
    system, *conversation = first.body["messages"]
    assert system["role"] == "system"
    assert "#general" in system["content"]
    assert "from ana" in system["content"]
    # People's messages are "nick: text"; runs of them are one user turn.
    assert conversation == [{"role": "user", "content": "ana: hola\nbob: buenas\nana: primera"}]
    # Three earlier messages at most; the assistant's own answer is its turn.
    assert second.body["messages"][1:] == [
        {"role": "user", "content": "ana: primera"},
        {"role": "assistant", "content": "Respuesta uno."},
        {"role": "user", "content": "bob: gracias\nana: segunda"},
    ]
    ana.close()
    bob.close()


def test_without_an_endpoint_ask_says_how_to_configure_one(serve):
    address = chat(serve, None)
    ana, bob = Person(address, "ana"), Person(address, "bob")
    ana.send("/ask hola")
    assert ana.until("ERR")[-1] == (
        "ERR ai_unavailable: the AI assistant is not configured: set ENLACE_AI_URL (and "
        "ENLACE_AI_MODEL, ENLACE_AI_KEY) to an OpenAI-compatible Chat Completions endpoint, "
        "for example ENLACE_AI_URL=http://127.0.0.1:8000/v1, and restart the server"
    )
    bob.send("/ping")
    assert bob.line() == "pong"  # the question was not posted
    ana.close()
    bob.close()


def test_each_client_may_ask_once_per_interval(serve, endpoint):
    address = chat(serve, config(endpoint.url), ask_interval=60)
    ana, bob = Person(address, "ana"), Person(address, "bob")
    ana.send("/ask uno")
    ana.until("[general] assistant: Hola")
    ana.send("/ask dos")
    assert re.fullmatch(
        r"ERR ask_rate: one /ask every 60 s: ask again in (59\.\d|60\.0) s", ana.line()
    )
    bob.send("/ask tres")  # the limit is per client
    bob.until("[general] bob: tres")
    assert bob.line() == "[general] assistant: Hola"
    ana.send("/ping")
    seen = ana.until("pong")
    assert "[general] ana: dos" not in seen  # a refused question is not posted
    ana.close()
    bob.close()


def _hang(endpoint):
    endpoint.reply = Reply(hang=True)
    return endpoint.url


def _scripted(**reply):
    def script(endpoint):
        endpoint.reply = Reply(**reply)
        return endpoint.url

    return script


FAILURES = {
    "refused": (
        lambda endpoint: refusing_url(),
        {},
        r"cannot connect to the AI endpoint at 127\.0\.0\.1:\d+: connection refused",
    ),
    "server error": (
        _scripted(status=500, error="the model is overloaded"),
        {},
        r"the AI endpoint answered HTTP 500 Internal Server Error: the model is overloaded",
    ),
    "wrong key": (
        _scripted(status=401, error="Incorrect API key provided: sk-test"),
        {},
        r"the AI endpoint answered HTTP 401 Unauthorized: Incorrect API key provided: \*\*\* "
        r"\(check ENLACE_AI_KEY\)",
    ),
    "silent": (_hang, {"read_timeout": 0.3}, r"the AI endpoint went silent for 0\.3 s"),
    "endless": (
        _scripted(trickle=True),
        {"total_timeout": 0.5},
        r"the AI endpoint did not finish its answer within 0\.5 s",
    ),
    "not json": (
        _scripted(raw=[b"data: {no es json\n\n"]),
        {},
        r"the AI endpoint sent malformed data: expected JSON after 'data:' \(\{no es json\)",
    ),
    "cut off": (
        _scripted(steps=["Hola"], done=False, finish_reason=None, framing="close"),
        {},
        r"the AI endpoint ended its stream before the answer",
    ),
    "long line": (
        _scripted(raw=[b"data: " + b"x" * 1000 + b"\n\n"]),
        {"max_line": 512},
        r"the AI endpoint sent a line of its stream longer than 512 bytes",
    ),
    "not a stream": (
        _scripted(raw=[b"<html>hola</html>"], content_type="text/html"),
        {},
        r"the AI endpoint's answer was neither an event stream nor JSON \(text/html\): .*",
    ),
    "error in the stream": (
        _scripted(raw=[b'data: {"error": {"message": "rate limit reached"}}\n\n']),
        {},
        r"the AI endpoint reported an error: rate limit reached",
    ),
    "empty answer": (_scripted(steps=[]), {}, r"the AI endpoint sent an empty answer"),
}


@pytest.mark.parametrize("case", FAILURES)
def test_a_failing_endpoint_is_reported_and_the_chat_goes_on(serve, endpoint, case):
    script, limits, message = FAILURES[case]
    address = chat(serve, config(script(endpoint), **limits), ask_interval=None)
    ana, bob = Person(address, "ana"), Person(address, "bob")
    ana.send("/ask ¿funcionas?")
    assert ana.until("¿funcionas?")[-1] == "[general] ana: ¿funcionas?"
    error = ana.line()
    assert re.fullmatch(f"ERR ai_failed: {message}", error), error
    lines = bob.until("could not answer")
    assert lines[-2:] == [
        "[general] ana: ¿funcionas?",
        f"* the assistant could not answer ana: {error.removeprefix('ERR ai_failed: ')}",
    ]
    bob.send("sigo aquí")
    assert ana.line() == "[general] bob: sigo aquí"  # nothing else came between
    if case != "refused":  # the endpoint recovers, and so does the assistant
        endpoint.reply = Reply(steps=["Ya funciono."])
        ana.send("/ask ¿y ahora?")
        assert ana.until("[general] assistant:")[-1] == "[general] assistant: Ya funciono."
    ana.close()
    bob.close()


def test_a_json_client_in_the_room_sees_how_a_stream_ended(serve):
    address = chat(serve, config(refusing_url()))
    ana, carol = Person(address, "ana"), Person(address, "carol", json_form=True)
    ana.send("/ask hola")
    carol.event("message")
    failure = carol.event("assistant")
    assert failure["error"]["code"] == "ai_failed"
    assert failure["text"] == f"the assistant could not answer ana: {failure['error']['message']}"
    ana.close()
    carol.close()


def test_an_answer_over_the_limit_is_refused_not_cut(serve, endpoint):
    endpoint.reply = Reply(steps=["x" * 40, "y" * 40])
    address = chat(serve, config(endpoint.url, max_answer=64))
    ana, bob = Person(address, "ana"), Person(address, "bob")
    ana.send("/ask dime mucho")
    ana.until("dime mucho")
    message = (
        "the answer grew past the 64-byte limit for an answer, so it was not posted "
        "(ask for a shorter one)"
    )
    assert ana.line() == f"ERR answer_too_long: {message}"
    assert bob.until("could not answer")[-1] == f"* the assistant could not answer ana: {message}"
    bob.send("/history")
    replay = bob.until("messages of general")
    assert replay == ["[general] ana: dime mucho", "1 messages of general"]
    ana.close()
    bob.close()


def test_a_plain_json_answer_is_accepted(serve, endpoint):
    endpoint.reply = Reply(steps=["Respuesta ", "entera."], stream=False)
    address = chat(serve, config(endpoint.url))
    ana = Person(address, "ana")
    ana.send("/ask ¿sin stream?")
    assert ana.until("assistant:")[-1] == "[general] assistant: Respuesta entera."
    ana.close()


def test_any_line_ending_and_any_cut_of_the_stream_are_read(serve, endpoint):
    events = b"".join(
        b"data: " + json.dumps({"choices": [{"delta": {"content": text}}]}).encode() + b"\r\n\r\n"
        for text in ("Ho", "la", " ✓")
    )
    stream = b": un comentario\r\n\r\n" + events + b"data: [DONE]\r\n\r\n"
    endpoint.reply = Reply(raw=[stream[i : i + 7] for i in range(0, len(stream), 7)])
    address = chat(serve, config(endpoint.url))
    ana = Person(address, "ana")
    ana.send("/ask ¿saludas?")
    assert ana.until("assistant:")[-1] == "[general] assistant: Hola ✓"
    ana.close()


def test_an_answer_the_model_cut_short_says_so(serve, endpoint):
    endpoint.reply = Reply(steps=["Empiezo y"], finish_reason="length", done=False)
    address = chat(serve, config(endpoint.url))
    ana = Person(address, "ana")
    ana.send("/ask cuéntame todo")
    assert ana.until("assistant:")[-1] == (
        "[general] assistant: Empiezo y [cut short: the model reached its length limit]"
    )
    ana.close()


def test_control_characters_never_reach_the_terminals(serve, endpoint):
    endpoint.reply = Reply(steps=["\x1b[2Jlimpio\x07\r\n"])
    address = chat(serve, config(endpoint.url))
    ana = Person(address, "ana")
    ana.send("/ask ¿escapes?")
    assert ana.until("assistant:")[-1] == "[general] assistant: [2Jlimpio"
    ana.close()


def test_answers_in_progress_are_bounded(serve, endpoint):
    go = threading.Event()
    endpoint.reply = Reply(steps=["Uno", go, " listo."])
    address = chat(serve, config(endpoint.url), max_pending=1)
    ana, bob = Person(address, "ana"), Person(address, "bob")
    ana.send("/ask primera")
    bob.until("[general] ana: primera")
    bob.send("/ask segunda")
    assert bob.line() == (
        "ERR ai_busy: the assistant is answering as many questions as this server allows (1); "
        "ask again in a moment"
    )
    go.set()
    assert bob.until("assistant:")[-1] == "[general] assistant: Uno listo."
    ana.close()
    bob.close()


def test_the_room_gets_the_answer_even_if_the_asker_leaves(serve, endpoint):
    go = threading.Event()
    endpoint.reply = Reply(steps=["Para ", go, "todos."])
    address = chat(serve, config(endpoint.url))
    ana, bob = Person(address, "ana"), Person(address, "bob")
    ana.send("/ask ¿me esperáis?")
    bob.until("[general] ana: ¿me esperáis?")
    ana.close()
    go.set()
    assert bob.until("assistant:")[-1] == "[general] assistant: Para todos."
    bob.close()


def test_questions_are_chat_messages(serve, endpoint):
    address = chat(serve, config(endpoint.url))
    ana = Person(address, "ana")
    ana.send("/ask")
    assert ana.line() == "ERR bad_arguments: missing question; usage: /ask QUESTION"
    ana.send("/ask " + "x" * 4097)
    assert ana.line() == (
        "ERR message_too_long: a message of 4097 bytes exceeds the 4096-byte limit"
    )
    ana.send("/help")
    assert "/ask QUESTION" in "\n".join(ana.until("/who"))
    assert not endpoint.requests
    ana.close()


# -- configuration -----------------------------------------------------------------


def test_the_configuration_comes_from_the_environment():
    assert AssistantConfig.from_env({}) is None
    assert AssistantConfig.from_env({"ENLACE_AI_URL": " ", "ENLACE_AI_MODEL": "m"}) is None
    found = AssistantConfig.from_env(
        {
            "ENLACE_AI_URL": "http://127.0.0.1:8000/v1/",
            "ENLACE_AI_MODEL": "llama",
            "ENLACE_AI_KEY": "k",
        },
        read_timeout=1.5,
    )
    assert found is not None
    assert (found.model, found.key, found.read_timeout) == ("llama", "k", 1.5)
    assert found.endpoint == "http://127.0.0.1:8000/v1/chat/completions"
    assert "k'" not in repr(found) and "key" not in repr(found)
    no_key = AssistantConfig.from_env({"ENLACE_AI_URL": "http://h/v1", "ENLACE_AI_MODEL": "m"})
    assert no_key is not None and no_key.key is None


@pytest.mark.parametrize(
    ("url", "endpoint"),
    [
        ("https://api.example.com/v1", "https://api.example.com/v1/chat/completions"),
        ("http://127.0.0.1:8080", "http://127.0.0.1:8080/chat/completions"),
        ("http://h/v1/chat/completions", "http://h/v1/chat/completions"),
        ("https://h/openai/v1?api-version=1", "https://h/openai/v1/chat/completions?api-version=1"),
    ],
)
def test_the_endpoint_is_the_base_url_and_chat_completions(url, endpoint):
    assert AssistantConfig(url, "m").endpoint == endpoint


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({"ENLACE_AI_URL": "http://h/v1"}, "ENLACE_AI_MODEL is not"),
        ({"ENLACE_AI_URL": "ftp://h/v1", "ENLACE_AI_MODEL": "m"}, "http:// or https://"),
        ({"ENLACE_AI_URL": "127.0.0.1:8000", "ENLACE_AI_MODEL": "m"}, "http:// or https://"),
        (
            {"ENLACE_AI_URL": "http://h/v1", "ENLACE_AI_MODEL": "m", "ENLACE_AI_KEY": "a\nb"},
            "printable ASCII",
        ),
    ],
)
def test_a_bad_configuration_is_one_clear_error(environ, message):
    with pytest.raises(AssistantConfigError, match=re.escape(message)) as caught:
        AssistantConfig.from_env(environ)
    assert caught.value.code == "ai_config"
