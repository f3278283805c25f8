"""Helpers for testing with real Redis servers (used by pyrecks' own suite and benchmarks)."""

from pyrecks.testing.server import RedisServer, find_redis_server

__all__ = ["RedisServer", "find_redis_server"]
