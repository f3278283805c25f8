"""The test-server layer itself: later durability tests rely on restart and kill working."""

from __future__ import annotations

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
