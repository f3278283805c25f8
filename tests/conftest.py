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
        server = RedisServer(**kwargs).start()
        made.append(server)
        return server

    yield make
    for server in made:
        server.close()
