"""Tests for :mod:`enlace.addresses`: writing and reading ``HOST:PORT``.

IPv6 literals are bracketed on the way out (``[::1]:8080``) and accepted with
brackets on the way in; a missing port is filled from ``default_port`` when
given. Bad input raises :class:`ValueError` with a message naming the input
and the problem.
"""

from __future__ import annotations

import ipaddress
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from enlace.addresses import format_address, parse_address

# ---------------------------------------------------------------------------------- format_address


@pytest.mark.parametrize(
    ("host", "port", "text"),
    [
        ("127.0.0.1", 8000, "127.0.0.1:8000"),
        ("localhost", 0, "localhost:0"),
        ("example.org", 65535, "example.org:65535"),
        ("::1", 8080, "[::1]:8080"),
        ("::", 7, "[::]:7"),
        ("fe80::1%eth0", 9, "[fe80::1%eth0]:9"),
        ("0.0.0.0", 80, "0.0.0.0:80"),
        ("", 80, ":80"),
    ],
)
def test_format_address(host: str, port: int, text: str) -> None:
    assert format_address(host, port) == text


# ----------------------------------------------------------------------------------- parse_address


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1:8000", ("127.0.0.1", 8000)),
        ("localhost:0", ("localhost", 0)),
        ("example.org:65535", ("example.org", 65535)),
        ("[::1]:8080", ("::1", 8080)),
        ("[::]:7", ("::", 7)),
        ("[fe80::1%eth0]:9", ("fe80::1%eth0", 9)),
        ("[2001:db8::1]:443", ("2001:db8::1", 443)),
        ("host:0080", ("host", 80)),
    ],
)
def test_parse_address(text: str, expected: tuple[str, int]) -> None:
    assert parse_address(text) == expected
    # An explicit port wins over the default.
    assert parse_address(text, default_port=1) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("localhost", ("localhost", 5)),
        ("127.0.0.1", ("127.0.0.1", 5)),
        ("[::1]", ("::1", 5)),
        ("::1", ("::1", 5)),  # a bare IPv6 literal has no port in it
        ("2001:db8::1", ("2001:db8::1", 5)),
    ],
)
def test_parse_address_default_port(text: str, expected: tuple[str, int]) -> None:
    assert parse_address(text, default_port=5) == expected


def test_parse_address_default_port_zero_is_a_port() -> None:
    assert parse_address("localhost", default_port=0) == ("localhost", 0)
    assert parse_address("[::1]", default_port=0) == ("::1", 0)


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("localhost", "expected HOST:PORT"),
        ("::1", "expected HOST:PORT"),
        ("[::1]", r"expected \[HOST\]:PORT"),
        ("[::1", "missing ']'"),
        ("[::1:80", "missing ']'"),
        ("[::1]80", r"expected \[HOST\]:PORT"),
        ("[::1]]:80", r"expected \[HOST\]:PORT"),
        (":80", "missing host"),
        ("[]:80", "missing host"),
        ("host:", "port must be a number from 0 to 65535"),
        ("[::1]:", "port must be a number from 0 to 65535"),
        ("host:70000", "port must be a number from 0 to 65535"),
        ("host:65536", "port must be a number from 0 to 65535"),
        ("[::1]:70000", "port must be a number from 0 to 65535"),
        ("host:-1", "port must be a number from 0 to 65535"),
        ("host:+80", "port must be a number from 0 to 65535"),
        ("host:http", "port must be a number from 0 to 65535"),
        ("host: 80", "port must be a number from 0 to 65535"),
        ("host:80 ", "port must be a number from 0 to 65535"),
        ("host:1_000", "port must be a number from 0 to 65535"),
        ("host:8.0", "port must be a number from 0 to 65535"),
        ("", "expected HOST:PORT"),
    ],
)
def test_parse_address_rejects_bad_input(text: str, problem: str) -> None:
    with pytest.raises(ValueError, match=rf"^bad address {re.escape(repr(text))}: {problem}"):
        parse_address(text)


@pytest.mark.parametrize(
    "text", ["[::1", "host:", "host:70000", ":80", "[]:80", "[::1]x", "host:abc"]
)
def test_default_port_does_not_excuse_a_malformed_address(text: str) -> None:
    with pytest.raises(ValueError, match=r"^bad address "):
        parse_address(text, default_port=80)


def test_parse_address_boundary_ports() -> None:
    assert parse_address("h:0") == ("h", 0)
    assert parse_address("h:65535") == ("h", 65535)
    with pytest.raises(ValueError, match="port must be"):
        parse_address("h:65536")


def test_superscript_digit_port_gets_the_friendly_message() -> None:
    with pytest.raises(ValueError, match="port must be a number"):
        parse_address("host:²")
    for text in ("h:\u0663", "h:\uff18\uff10"):  # Arabic-Indic and fullwidth digits
        with pytest.raises(ValueError, match="port must be a number"):
            parse_address(text)


# ------------------------------------------------------------------------------------- round trips

labels = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-", min_size=1, max_size=12)
hostnames = st.lists(labels, min_size=1, max_size=4).map(".".join)
hosts = st.one_of(hostnames, st.ip_addresses().map(str))
ports = st.integers(min_value=0, max_value=65535)


@settings(max_examples=200, deadline=None)
@given(host=hosts, port=ports)
def test_parse_inverts_format(host: str, port: int) -> None:
    text = format_address(host, port)
    assert parse_address(text) == (host, port)
    assert parse_address(text, default_port=1) == (host, port)


@settings(max_examples=200, deadline=None)
@given(address=st.ip_addresses(v=6), port=ports)
def test_ipv6_literals_are_always_bracketed(address: ipaddress.IPv6Address, port: int) -> None:
    text = format_address(str(address), port)
    assert text == f"[{address}]:{port}"
    # A bare literal is read as a host without a port, never split at its last colon.
    assert parse_address(str(address), default_port=port) == (str(address), port)
