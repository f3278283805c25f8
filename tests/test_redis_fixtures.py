"""The test-server layer itself: later durability tests rely on restart and kill working."""

from __future__ import annotations

import sys

import pytest
import redis

from pyrecks.testing import RedisServer


def test_shared_server_is_flushed_between_tests(r: redis.Redis) -> None:
    assert r.dbsize() == 0
    r.set("left-behind", "1")


def test_shared_server_is_flushed_between_tests_again(r: redis.Redis) -> None:
    assert r.get("left-behind") is None


def test_restart_keeps_data_with_appendonly(redis_factory) -> None:  # type: ignore[no-untyped-def]
    server: RedisServer = redis_factory(appendonly=True)
    server.client().set("k", "v")
    server.restart()
    assert server.client().get("k") == b"v"


def test_kill_makes_server_unreachable_then_start_brings_it_back(redis_factory) -> None:  # type: ignore[no-untyped-def]
    server: RedisServer = redis_factory(appendonly=True)
    server.client().set("k", "v")
    server.kill()
    with pytest.raises(redis.ConnectionError):
        server.client(socket_connect_timeout=1).ping()
    server.start()
    assert server.client().get("k") == b"v"


def test_two_servers_are_independent(redis_factory) -> None:  # type: ignore[no-untyped-def]
    a, b = redis_factory(), redis_factory()
    a.client().set("k", "a")
    assert b.client().get("k") is None
    assert a.port != b.port


def test_password_is_required_when_set(redis_factory) -> None:  # type: ignore[no-untyped-def]
    server: RedisServer = redis_factory(password="s3cret")
    assert server.client().ping()
    anonymous = redis.Redis(host="127.0.0.1", port=server.port)
    with pytest.raises(redis.AuthenticationError):
        anonymous.ping()


def test_tls_certificates_carry_the_key_usage_python_313_requires(tmp_path) -> None:  # type: ignore[no-untyped-def]
    pytest.importorskip("trustme")
    from cryptography import x509

    server = RedisServer(tls=True, data_dir=tmp_path)
    server._make_certificates()
    ca = x509.load_pem_x509_certificate((tmp_path / "ca.crt").read_bytes())
    leaf = x509.load_pem_x509_certificate((tmp_path / "server.crt").read_bytes())
    assert ca.extensions.get_extension_for_class(x509.KeyUsage).value.key_cert_sign
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert leaf.extensions.get_extension_for_class(x509.KeyUsage).value.digital_signature
    names = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "localhost" in names.get_values_for_type(x509.DNSName)
    # The client side of 3.13's strict verification accepts them.
    import ssl

    ctx = ssl.create_default_context(cafile=str(tmp_path / "ca.crt"))
    assert ctx.verify_flags & ssl.VERIFY_X509_STRICT or sys.version_info < (3, 13)


def test_the_server_under_test_reports_its_version(redis_server: RedisServer) -> None:
    from pyrecks.testing.server import server_version

    info = redis_server.client().info("server")
    version = info.get("valkey_version") or info["redis_version"]
    assert version in server_version(redis_server.executable)
