"""The chat page in a real browser: Debian's Chromium, driven by Playwright.

Two pages and one TCP line client (as with ``nc``) talk in a room of one
ChatService, served by the real web server and enlace's TCP server on
loopback. A reload keeps the room and its history; a server restart is
survived. One test saves the screenshot the README shows (docs/img/chat.png):
it is rewritten when missing or with ``ENLACE_UPDATE_SCREENSHOTS=1``, so that
running the tests does not leave a changed image behind.
"""

from __future__ import annotations

import base64
import hashlib
import os
import ssl
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trustme
from cryptography import x509
from cryptography.hazmat.primitives import serialization

import enlace.asyncio
from enlace.services.chat import ChatService
from enlace.web.server import WebServer
from enlace.web.websocket import WebSocketEndpoint
from tests.cli.support import server
from tests.conftest import LoopThread
from tests.services.people import Person

CHROMIUM = "/usr/bin/chromium"
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
SCREENSHOT = Path(__file__).resolve().parents[2] / "docs" / "img" / "chat.png"
WAIT = 5000  # ms: anything the page does on loopback takes a fraction of this

pytestmark = pytest.mark.skipif(
    not os.path.exists(CHROMIUM),
    reason="Debian's chromium is not installed at /usr/bin/chromium (scripts/test installs it)",
)

sync_api = pytest.importorskip("playwright.sync_api")
expect = sync_api.expect


class Site:
    """A ChatService on enlace's TCP server and the web server with its /ws, on one loop."""

    def __init__(self) -> None:
        self.loop = LoopThread()
        self.web_port = 0
        self.chat_port = 0
        self.start()

    def start(self) -> None:
        async def make() -> tuple[Any, WebServer]:
            chat = ChatService(flood_burst=None)
            tcp = enlace.asyncio.Server(chat, "127.0.0.1", self.chat_port)
            await tcp.start()
            web = WebServer(None, "127.0.0.1", self.web_port, websocket=WebSocketEndpoint(chat))
            await web.start()
            return tcp, web

        self.tcp, self.web = self.loop.run(make())
        self.chat_port, self.web_port = self.tcp.address[1], self.web.address[1]

    def stop(self) -> None:
        self.loop.run(self.web.shutdown(2.0))
        self.loop.run(self.tcp.shutdown(0.0))

    @property
    def chat_address(self) -> tuple[str, int]:
        return ("127.0.0.1", self.chat_port)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.web_port}/chat.html"


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def site() -> Iterator[Site]:
    running = Site()
    yield running
    running.stop()
    running.loop.close()


@pytest.fixture
def pages(browser: Any) -> Iterator[list[Any]]:
    """Browser contexts (each its own storage, like two people) closed after the test."""
    contexts: list[Any] = []
    yield contexts
    for context in contexts:
        context.close()


def open_chat(
    browser: Any, pages: list[Any], url: str, nick: str, room: str | None = None, **options: Any
) -> Any:
    context = browser.new_context(**options)
    pages.append(context)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.errors = errors
    page.nick = nick
    page.goto(url)
    expect(page.locator("body")).to_have_attribute("data-state", "ok", timeout=WAIT)
    if page.locator("#nick-input").is_visible():
        page.fill("#nick-input", nick)
        page.press("#nick-input", "Enter")
    else:  # on a phone the form is folded away: type the command instead
        say(page, f"/nick {nick}")
    expect(page.locator("#status")).to_have_text(f"connected as {nick}", timeout=WAIT)
    if room is not None:
        page.fill("#join-input", room)
        page.press("#join-input", "Enter")
        expect(page.locator("#room-title")).to_have_text(f"#{room}", timeout=WAIT)
    return page


def say(page: Any, text: str) -> None:
    page.fill("#say-input", text)
    page.press("#say-input", "Enter")


def log_of(page: Any) -> Any:
    return page.locator("#log")


def members(page: Any, wanted: list[str]) -> None:
    expected = [f"{nick} (you)" if nick == page.nick else nick for nick in wanted]
    expect(page.locator("#members li")).to_have_text(expected, timeout=WAIT)


def test_two_pages_and_a_tcp_client_talk_in_a_room(browser, site, pages):
    nc = Person(site.chat_address, "nc")
    nc.send("/join python")
    nc.until("you are in python")
    ana = open_chat(
        browser, pages, site.url, "ana", "python", viewport={"width": 1000, "height": 620}
    )
    bea = open_chat(browser, pages, site.url, "bea", "python")
    members(ana, ["ana", "bea", "nc"])
    expect(ana.locator("#rooms button[aria-current=true]")).to_contain_text("#python", timeout=WAIT)

    say(ana, "hola, ¿quién está?")
    expect(log_of(bea)).to_contain_text("ana" + "hola, ¿quién está?", timeout=WAIT)
    assert nc.until("quién")[-1] == "[python] ana: hola, ¿quién está?"

    nc.send("yo, desde nc")
    for page in (ana, bea):
        expect(log_of(page)).to_contain_text("ncyo, desde nc", timeout=WAIT)
    say(bea, "y yo desde otro navegador")
    expect(log_of(ana)).to_contain_text("beay yo desde otro navegador", timeout=WAIT)
    assert nc.until("otro navegador")[-1] == "[python] bea: y yo desde otro navegador"

    nc.send("/msg ana esto es solo para ti")
    expect(ana.locator("#log li.private")).to_contain_text("nc → ana", timeout=WAIT)
    expect(log_of(bea)).not_to_contain_text("solo para ti")
    expect(ana.locator("#rooms button[aria-current=true]")).to_have_text("#python 3")
    if os.environ.get("ENLACE_UPDATE_SCREENSHOTS") or not SCREENSHOT.exists():
        SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
        ana.screenshot(path=str(SCREENSHOT))
    assert SCREENSHOT.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")

    say(ana, '<img src=x onerror="document.title=1"> & <b>no es HTML</b>')
    line = ana.locator("#log li", has_text="no es HTML")
    expect(line).to_contain_text('<img src=x onerror="document.title=1"> & <b>no es HTML</b>')
    assert ana.locator("#log img, #log b").count() == 0
    expect(log_of(bea)).to_contain_text("<b>no es HTML</b>", timeout=WAIT)

    say(ana, "/who")
    expect(log_of(ana)).to_contain_text("python: ", timeout=WAIT)

    nc.close()
    members(ana, ["ana", "bea"])
    assert ana.errors == [] and bea.errors == []


def test_a_reload_keeps_the_nick_the_room_and_the_history(browser, site, pages):
    ana = open_chat(browser, pages, site.url, "ana", "lobby")
    say(ana, "primer mensaje")
    expect(log_of(ana)).to_contain_text("primer mensaje", timeout=WAIT)
    nc = Person(site.chat_address, "nc")
    nc.send("/join lobby")
    nc.until("you are in lobby")
    nc.send("segundo, desde nc 👋")
    expect(log_of(ana)).to_contain_text("segundo, desde nc 👋", timeout=WAIT)

    ana.reload()
    expect(ana.locator("#status")).to_have_text("connected as ana", timeout=WAIT)
    expect(ana.locator("#room-title")).to_have_text("#lobby")
    earlier = ana.locator("#log li.earlier")
    expect(earlier).to_have_count(2, timeout=WAIT)
    expect(earlier.nth(0)).to_contain_text("anaprimer mensaje")
    expect(earlier.nth(1)).to_contain_text("ncsegundo, desde nc 👋")
    nc.send("tercero")
    expect(log_of(ana)).to_contain_text("nctercero", timeout=WAIT)
    nc.close()


def test_history_of_the_default_room_is_shown_on_arrival(browser, site, pages):
    nc = Person(site.chat_address, "nc")
    nc.send("hola general")
    nc.until("hola general")
    ana = open_chat(browser, pages, site.url, "ana")
    expect(ana.locator("#room-title")).to_have_text("#general")
    expect(ana.locator("#log li.earlier")).to_contain_text(["nchola general"], timeout=WAIT)
    nc.close()


def test_the_page_reconnects_after_a_restart_and_rejoins(browser, site, pages):
    ana = open_chat(browser, pages, site.url, "ana", "python")
    site.stop()
    expect(ana.locator("body")).to_have_attribute("data-state", "down", timeout=WAIT)
    expect(ana.locator("#status")).to_contain_text("reconnecting")
    site.start()  # same ports, a new chat: rooms and nicks are gone
    expect(ana.locator("#status")).to_have_text("connected as ana", timeout=10_000)
    expect(ana.locator("#room-title")).to_have_text("#python")
    nc = Person(site.chat_address, "nc")
    nc.send("/join python")
    nc.until("you are in python")
    nc.send("¿sigues ahí?")
    expect(log_of(ana)).to_contain_text("nc¿sigues ahí?", timeout=WAIT)
    assert ana.errors == []
    nc.close()


def test_on_a_phone_the_side_panel_folds_away(browser, site, pages):
    phone = open_chat(
        browser, pages, site.url, "ana", viewport={"width": 390, "height": 740}, is_mobile=True
    )
    side = phone.locator("#side")
    expect(side).to_be_hidden()
    phone.click("#toggle-side")
    expect(side).to_be_visible()
    phone.fill("#join-input", "movil")
    phone.press("#join-input", "Enter")
    expect(phone.locator("#room-title")).to_have_text("#movil", timeout=WAIT)
    expect(side).to_be_hidden()  # joining folds it again
    width = phone.evaluate("document.documentElement.scrollWidth")
    assert width <= 390, "the page scrolls sideways on a phone"


@pytest.mark.parametrize("runtime", ["asyncio", "threads"])
def test_browser_and_nc_users_share_rooms_under_enlace_up(browser, pages, runtime):
    up = ("up", "--any-port", "--runtime", runtime)
    with server(*up, marker=b"Ctrl-C stops everything") as cli:
        table = cli.table()
        web, chat = table["web"][1], table["chat"][1]
        url = f"http://127.0.0.1:{web}/chat.html"
        ana = open_chat(browser, pages, url, "ana", "python")
        nc = Person(("127.0.0.1", chat), "nc")
        nc.send("/join python")
        expect(log_of(ana)).to_contain_text("nc joined python", timeout=WAIT)
        say(ana, "hola desde el navegador")
        assert nc.until("navegador")[-1] == "[python] ana: hola desde el navegador"
        nc.send("hola desde nc")
        expect(log_of(ana)).to_contain_text("nchola desde nc", timeout=WAIT)
        nc.close()
        code, _ = cli.stop()
        assert code == 0


def test_a_page_from_another_origin_cannot_connect(browser, site, pages):
    # Another site's page (here: a data: URL, whose Origin is "null") tries our /ws.
    context = browser.new_context()
    pages.append(context)
    page = context.new_page()
    page.goto("about:blank")
    result = page.evaluate(
        """url => new Promise(done => {
            const ws = new WebSocket(url);
            ws.onopen = () => done("open");
            ws.onclose = (e) => done("closed " + e.code);
        })""",
        f"ws://127.0.0.1:{site.web_port}/ws",
    )
    assert result == "closed 1006"  # the handshake was refused (403), so no WebSocket
    open_chat(browser, pages, site.url, "ana")  # and the server's own page still connects


# -- HTTPS and the token -------------------------------------------------------------------


def spki_hash(pem: bytes) -> str:
    """The base64 SHA-256 of a certificate's public key, as Chromium pins it."""
    key = x509.load_pem_x509_certificate(pem).public_key()
    der = key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return base64.b64encode(hashlib.sha256(der).digest()).decode()


def test_over_https_the_page_takes_its_token_from_the_fragment_or_asks_for_it(browser):
    ca = trustme.CA()
    leaf = ca.issue_cert("localhost", "127.0.0.1")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    leaf.configure_cert(context)
    loop = LoopThread()

    async def make() -> WebServer:
        endpoint = WebSocketEndpoint(ChatService(flood_burst=None), token="s3cret", fail_delay=0.1)
        web = WebServer(None, "127.0.0.1", 0, websocket=endpoint, ssl=context)
        await web.start()
        return web

    web = loop.run(make())
    # Chromium trusts exactly this certificate's key (a pin, not "ignore every error").
    pin = "--ignore-certificate-errors-spki-list=" + spki_hash(leaf.cert_chain_pems[0].bytes())
    try:
        # Its own Chromium, with the pin, from the module's Playwright.
        chromium = browser.browser_type.launch(executable_path=CHROMIUM, args=[*ARGS, pin])
        try:
            base = f"https://localhost:{web.address[1]}/chat.html"
            ana = chromium.new_context().new_page()
            ana.goto(base + "#token=s3cret")
            expect(ana.locator("body")).to_have_attribute("data-state", "ok", timeout=WAIT)
            assert "s3cret" not in ana.url  # taken out of the address bar
            ana.reload()  # kept for the tab
            expect(ana.locator("body")).to_have_attribute("data-state", "ok", timeout=WAIT)

            bea = chromium.new_context().new_page()
            bea.goto(base)
            expect(bea.locator("#token-form")).to_be_visible(timeout=WAIT)
            expect(bea.locator("#status")).to_have_text("an access token is needed")
            bea.fill("#token-input", "wrong")
            bea.press("#token-input", "Enter")
            expect(bea.locator("#status")).to_have_text("wrong access token", timeout=WAIT)
            bea.fill("#token-input", "s3cret")
            bea.press("#token-input", "Enter")
            expect(bea.locator("body")).to_have_attribute("data-state", "ok", timeout=WAIT)
            expect(bea.locator("#token-form")).to_be_hidden()
            say(bea, "hola por https")
            expect(log_of(ana)).to_contain_text("hola por https", timeout=WAIT)
        finally:
            chromium.close()
    finally:
        loop.run(web.shutdown(0.0))
        loop.close()
