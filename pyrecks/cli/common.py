"""Pieces every pyrecks command shares: the ``--redis`` option and error reporting.

Commands raise :class:`~pyrecks.errors.PyrecksError` (or let redis-py's connection errors
escape); :class:`PyrecksGroup` turns those into one clear line on stderr and exit code 1
instead of a traceback.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, TypeVar

import click
import redis

from pyrecks.connection import describe, redact
from pyrecks.errors import PyrecksError, SourceError

F = TypeVar("F", bound=Callable[..., Any])


def remember_url(ctx: click.Context, _param: click.Parameter, value: str | None) -> str | None:
    # Kept on the root context so the group's error handler can say where it tried.
    ctx.find_root().meta[_URL_KEY] = value
    return value


_URL_KEY = "pyrecks.redis_url"


def redis_option(func: F) -> F:
    """``--redis URL`` (env ``REDIS_URL``; default: the embedded Redis)."""
    return click.option(
        "--redis",
        "redis_url",
        metavar="URL",
        default=None,
        callback=remember_url,
        help="Redis URL (redis://, rediss://, unix://). Default: $REDIS_URL, "
        "else the embedded Redis in $PYRECKS_HOME (~/.pyrecks).",
    )(func)


def did_you_mean(name: str, candidates: Iterable[str]) -> str:
    """``"; did you mean func1?"`` for the closest candidates, else ``""``."""
    import difflib

    scored = [(difflib.SequenceMatcher(None, name, c).ratio(), c) for c in set(candidates)]
    scored = [(score, c) for score, c in scored if score >= 0.6]
    if not scored:
        return ""
    best = max(score for score, _c in scored)
    close = sorted(c for score, c in scored if score == best)
    return "; did you mean " + " or ".join(close) + "?"


def fail(message: str, code: int = 1) -> None:
    click.echo(f"error: {message}", err=True)
    raise SystemExit(code)


class PyrecksGroup(click.Group):
    """A click group whose commands report pyrecks and Redis errors without a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except SourceError as exc:
            click.echo(f"error: {exc}", err=True)
            if exc.text:
                click.echo(exc.context(), err=True)
            raise SystemExit(1) from None
        except PyrecksError as exc:
            fail(str(exc))
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            url = ctx.meta.get(_URL_KEY)
            sub = ctx.invoked_subcommand
            reason = redact(str(exc)).rstrip(".")
            fail(
                f"cannot reach Redis at {describe(url)}: {reason}. Is the server running? "
                "Pass --redis URL or set REDIS_URL." + (f" (while running '{sub}')" if sub else "")
            )
        except redis.AuthenticationError as exc:
            fail(f"Redis refused the credentials: {exc}. Put user:password in the URL.")
        except redis.ResponseError as exc:
            if "NOPERM" in str(exc):
                fail(f"the Redis user lacks a permission: {exc}")
            raise
