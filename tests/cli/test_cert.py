"""`enlace cert`, and TLS, IPv6, tokens and access control from the command line."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess

import pytest

from tests.cli.support import run, server

pytestmark = pytest.mark.parametrize("runtime", ["threads", "asyncio"])


@pytest.fixture
def cert(tmp_path):
    result = run("cert", "--out", str(tmp_path))
    assert result.returncode == 0, result.stderr
    return tmp_path / "enlace-cert.pem", tmp_path / "enlace-key.pem", result.stdout.decode()


def test_cert_writes_files_and_prints_the_flags(cert, runtime):
    cert_file, key_file, out = cert
    assert stat.S_IMODE(os.stat(key_file).st_mode) == 0o600
    assert f"--tls-cert {cert_file} --tls-key {key_file}" in out
    assert f"--tls --ca {cert_file}" in out
    again = run("cert", "--out", str(cert_file.parent))
    assert again.returncode == 1
    assert again.stderr.decode().strip() == f"enlace: {cert_file} exists; use --force to replace it"


def test_cert_for_a_bracketed_ipv6_address_prints_usable_commands(tmp_path, runtime):
    result = run("cert", "[::1]", "--out", str(tmp_path))
    assert result.returncode == 0, result.stderr
    out = result.stdout.decode()
    assert "enlace chat [::1]:8080 --tls" in out
    assert f"enlace connect --tls --ca {tmp_path / 'enlace-cert.pem'} ::1 PORT" in out
    assert "-connect [::1]:8080 " in out
    assert "[[" not in out


def test_chat_over_tls_with_a_token_end_to_end(cert, runtime):
    cert_file, key_file, _ = cert
    flags = ["--tls-cert", str(cert_file), "--tls-key", str(key_file), "--token", "s3cret"]
    with server("serve", "message", "--port", "0", "--runtime", runtime, *flags) as cli:
        address = f"localhost:{cli.port}"
        ok = run(
            "send", address, "/upper hola", "--tls", "--ca", str(cert_file), "--token", "s3cret"
        )
        assert (ok.returncode, ok.stdout) == (0, b"HOLA\n"), ok.stderr
        env_ok = subprocess.run(
            ["python3", "-m", "enlace", "send", address, "/ping", "--tls", "--ca", str(cert_file)],
            env={**os.environ, "ENLACE_TOKEN": "s3cret"},
            capture_output=True,
            timeout=15,
            check=False,
        )
        assert env_ok.stdout == b"pong\n", env_ok.stderr
        wrong = run("send", address, "/ping", "--tls", "--ca", str(cert_file), "--token", "x")
        assert wrong.returncode == 1
        assert wrong.stderr.decode().strip() == "enlace: bad_token: wrong token"
        untrusted = run("send", address, "/ping", "--tls", "--token", "s3cret")
        assert untrusted.returncode == 1
        assert untrusted.stderr.decode().startswith("enlace: TLS to localhost:")
        assert "certificate not trusted" in untrusted.stderr.decode()
        assert "Traceback" not in untrusted.stderr.decode()
        plain = run("connect", "127.0.0.1", str(cli.port), stdin=b"/ping\n")
        assert plain.stdout == b"ERR tls_required: this port speaks TLS (connect with --tls)\r\n"
        if shutil.which("openssl"):
            s_client = subprocess.run(
                ["openssl", "s_client", "-connect", f"127.0.0.1:{cli.port}", "-CAfile",
                 str(cert_file), "-verify_return_error", "-verify_hostname", "localhost"],
                input=b"", capture_output=True, timeout=15, check=False,
            )  # fmt: skip
            assert b"Verify return code: 0 (ok)" in s_client.stdout, s_client.stdout
        code, err = cli.stop()
        assert code == 0
        assert b"TLS handshake failed: a plain (not TLS) client" in err


def test_tls_client_on_a_plain_port_one_line(runtime):
    with server("serve", "greet", "--port", "0", "--runtime", runtime) as cli:
        result = run("connect", "--tls", "127.0.0.1", str(cli.port))
        assert result.returncode == 1
        assert result.stderr.decode().strip() == (
            f"enlace: 127.0.0.1:{cli.port} does not speak TLS (plain TCP?)"
        )


def test_ipv6_loopback_and_dual_stack(runtime):
    with server("serve", "echo", "--host", "::1", "--port", "0", "--runtime", runtime) as cli:
        assert b"listening on [::1]:" in cli.banner
        assert run("connect", "::1", str(cli.port), stdin=b"hola\n").stdout == b"hola\n"
        assert run("connect", f"[::1]:{cli.port}", stdin=b"hola\n").stdout == b"hola\n"
        refused = run("connect", "127.0.0.1", str(cli.port), stdin=b"x")
        assert refused.returncode == 1  # ::1 is IPv6 only
    with server("serve", "message", "--host", "::", "--port", "0", "--runtime", runtime) as cli:
        assert run("send", f"127.0.0.1:{cli.port}", "/ping").stdout == b"pong\n"
        assert run("send", f"[::1]:{cli.port}", "/ping").stdout == b"pong\n"
        assert run("send", f"localhost:{cli.port}", "/ping").stdout == b"pong\n"
        _, err = cli.stop()
        assert b"warning: listening on :: without --tls-cert or --token" in err


def test_udp_over_ipv6_and_allow(runtime):
    with server("serve", "udp", "--host", "::1", "--port", "0", "--runtime", runtime) as cli:
        result = run("connect", "--udp", "::1", str(cli.port), stdin=b"hola\n")
        assert result.stdout == b"hola\n"
    with server(
        "serve", "udp", "--port", "0", "--runtime", runtime, "--allow", "10.0.0.0/8"
    ) as cli:
        result = run("connect", "--udp", "--wait", "0.3", "127.0.0.1", str(cli.port), stdin=b"x\n")
        assert result.stdout == b""
        _, err = cli.stop()
        assert b"127.0.0.1" in err and b"refused: not in the allow-list (UDP)" in err


def test_bad_allow_is_a_usage_error(runtime):
    result = run("serve", "echo", "--allow", "ten", "--runtime", runtime)
    assert result.returncode == 2
    assert b"bad network 'ten'" in result.stderr


def test_auto_loop_is_asyncios_own_with_tls(cert, runtime):
    # uvloop's TLS is about half as fast for small messages (benchmarks/run.py --tls).
    cert_file, key_file, _ = cert
    flags = ["--tls-cert", str(cert_file), "--tls-key", str(key_file)]
    with server("serve", "echo", "--port", "0", "--runtime", runtime, *flags) as cli:
        assert f"(tcp, {runtime} runtime)".encode() in cli.banner
