"""Pieces every pyrecks command shares: the ``--redis`` option and error reporting.

Commands raise :class:`~pyrecks.errors.PyrecksError` (or let redis-py's errors escape);
:class:`PyrecksGroup` turns those into one clear line on stderr instead of a traceback: exit
status 2 for a malformed Redis URL (a usage error, like click's), 1 for the rest.  Numeric
options are ranges (``click.IntRange``/``FloatRange`` or :data:`SECONDS`), so click refuses
values that make no sense (``--limit -1``) with its own usage error.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

import click
import redis

from pyrecks.connection import InvalidRedisURL, check_url, explain_redis_error
from pyrecks.errors import PyrecksError, SourceError

F = TypeVar("F", bound=Callable[..., Any])


def remember_url(ctx: click.Context, _param: click.Parameter, value: str | None) -> str | None:
    # Kept on the root context so the group's error handler can say where it tried.
    ctx.find_root().meta[_URL_KEY] = value
    if value is not None:
        check_url(value, "--redis")  # a malformed URL fails before the command does anything
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


class Seconds(click.FloatRange):
    """A number of seconds: a finite float in a range (``nan`` and ``inf`` are refused too,
    which ``click.FloatRange`` lets through)."""

    name = "seconds"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        rv = super().convert(value, param, ctx)
        if not math.isfinite(rv):
            self.fail(f"{value!r} is not a finite number of seconds.", param, ctx)
        return rv


#: ``--timeout``-like options: zero or more seconds.
SECONDS = Seconds(min=0)
#: Limits that must be more than zero seconds.
POSITIVE_SECONDS = Seconds(min=0, min_open=True)


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
    """A click group whose commands report pyrecks and Redis errors without a traceback.

    One line on stderr, ``error: ...``, saying what went wrong and what to do: exit status 2
    for a Redis URL that cannot work (a usage error, like click's own), 1 otherwise.
    """

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except SourceError as exc:
            click.echo(f"error: {exc}", err=True)
            if exc.text:
                click.echo(exc.context(), err=True)
            raise SystemExit(1) from None
        except InvalidRedisURL as exc:
            fail(str(exc), 2)
        except PyrecksError as exc:
            fail(str(exc))
        except redis.RedisError as exc:
            explained = explain_redis_error(exc, ctx.meta.get(_URL_KEY))
            if explained is None:
                raise
            message, code = explained
            sub = ctx.invoked_subcommand
            fail(message + (f" (while running '{sub}')" if sub else ""), code)
