"""ConnectionPolicy: the allow-list (IPv4, IPv6, v4-mapped) and the per-address count."""

from __future__ import annotations

import logging

import pytest

from enlace.policy import ConnectionPolicy, client_ip, parse_network


def test_allow_list_matches_networks_of_both_families():
    policy = ConnectionPolicy(["10.0.0.0/8", "::1", "192.168.1.7"])
    assert policy.allowed("10.1.2.3")
    assert policy.allowed("::1")
    assert policy.allowed("192.168.1.7")
    assert not policy.allowed("192.168.1.8")
    assert not policy.allowed("127.0.0.1")
    assert not policy.allowed("not an address")
    # An IPv4 client of a dual-stack socket arrives as ::ffff:a.b.c.d.
    assert policy.allowed("::ffff:10.9.9.9")
    assert ConnectionPolicy().allowed("203.0.113.1")


def test_bad_network_is_one_clear_message():
    with pytest.raises(ValueError, match="bad network 'ten'"):
        parse_network("ten")
    assert str(client_ip("::ffff:127.0.0.1")) == "127.0.0.1"


def test_per_address_count_and_release():
    policy = ConnectionPolicy(max_per_ip=2, count_loopback=True)
    assert policy.acquire("127.0.0.1") is None
    assert policy.acquire("::ffff:127.0.0.1") is None  # the same address
    refused = policy.acquire("127.0.0.1")
    assert refused == "too many connections from 127.0.0.1 (limit 2 per address)"
    assert policy.acquire("127.0.0.2") is None
    policy.release("127.0.0.1")
    assert policy.count("127.0.0.1") == 1
    assert policy.acquire("127.0.0.1") is None
    assert ConnectionPolicy(max_per_ip=None).acquire("1.2.3.4") is None
    # By default this machine's own clients are not capped (nor counted).
    local = ConnectionPolicy(max_per_ip=1)
    assert local.acquire("127.0.0.1") is None and local.acquire("::1") is None
    assert local.count("127.0.0.1") == 0
    assert local.acquire("10.0.0.1") is None and local.acquire("10.0.0.1") is not None


def test_refusal_answers_as_acquire_would_without_counting():
    policy = ConnectionPolicy(max_per_ip=2)
    assert policy.acquire("10.0.0.1") is None
    assert policy.refusal("10.0.0.1") is None
    assert policy.refusal("10.0.0.1", pending=1) == (
        "too many connections from 10.0.0.1 (limit 2 per address)"
    )
    assert policy.count("10.0.0.1") == 1  # only the acquired one
    assert policy.refusal("127.0.0.1", pending=100) is None  # loopback: not capped
    assert ConnectionPolicy(max_per_ip=None).refusal("10.0.0.1", pending=100) is None


def test_refused_datagrams_are_logged_once_per_source(caplog):
    policy = ConnectionPolicy(["10.0.0.0/8"])
    logger = logging.getLogger("enlace.test")
    with caplog.at_level(logging.WARNING, logger="enlace.test"):
        assert policy.admit_datagram(("10.0.0.1", 5), logger)
        for _ in range(5):
            assert not policy.admit_datagram(("127.0.0.1", 5), logger)
    assert [r.getMessage() for r in caplog.records] == [
        "127.0.0.1:5 refused: not in the allow-list (UDP)"
    ]
