"""Fixtures that give tests private, real Redis servers.

``redis_server`` is one server shared by the session (flushed before each test that asks for
``r`` or ``redis_url``); ``redis_factory`` makes extra servers a test can kill, restart or
configure, all stopped at the end of the test.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis

from pyrecks.testing import RedisServer


def pytest_report_header(config: pytest.Config) -> str:
    """Which server binary the suite runs on ($PYRECKS_REDIS_SERVER, PATH, or the bundled)."""
    from pyrecks.testing.server import find_redis_server, server_version

    try:
        exe = find_redis_server()
    except Exception as exc:  # the suite's own fixtures report it properly
        return f"redis server: none ({exc})"
    return f"redis server: {exe} ({server_version(exe)})"


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    server = RedisServer().start()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    redis_server.client().flushall()
    return redis_server.url


@pytest.fixture
def r(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


@pytest.fixture
def redis_factory() -> Iterator[Callable[..., RedisServer]]:
    made: list[RedisServer] = []

    def make(**kwargs: Any) -> RedisServer:
        server = RedisServer(**kwargs)
        made.append(server)  # closed (its data folder removed) even if it fails to start
        return server.start()

    yield make
    for server in made:
        server.close()
