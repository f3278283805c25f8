"""Escapes found by an independent review, each kept as a regression test, end to end.

Each of these passed the static checker when it was found.  The checker now refuses them
(PK306, PK304, PK404 …) and the guards compiled into every kernel block all of them
regardless; tests/test_guards_escapes.py runs each escape against each layer alone, and this
file runs them through a real VM and Redis.
"""

from __future__ import annotations

import pytest
import redis

from pyrecks.api import Pyrecks
from pyrecks.errors import KernelRejected
from pyrecks.vm.records import ChainStatus
from tests.vm_helpers import raw_kernel

ESCAPES = {
    # A module bound to another name reached its private helpers (exec with real builtins).
    "private_via_alias": """
import dataclasses
from pyrecks.kernel import done
def k(path: str):
    m = dataclasses
    f = m._create_fn("f", ["p"], ["return open(p).read()"])
    return done(f(path))
""",
    "private_via_list": """
import dataclasses
from pyrecks.kernel import done
def k(path: str):
    m = [dataclasses]
    return done(str(m[0]._create_fn))
""",
    # attrgetter with a built-up dunder name, through an alias of the operator module.
    "attrgetter_alias": """
import operator, random
from pyrecks.kernel import done
def k(x):
    m = operator
    g = m.attrgetter("__glob" + "als__")
    return done(str(g(random.randint)["_os"].getcwd()))
""",
    # A format template built at run time reading a function's globals.
    "format_template": """
import random
from pyrecks.kernel import done
def k(x):
    t = "{0.__glo" + "bals__[_os].environ[PATH]}"
    return done(t.format(random.randint))
""",
    "str_format_unbound": """
import random
from pyrecks.kernel import done
def k(x):
    t = "{0.__glo" + "bals__}"
    return done(str.format(t, random.randint))
""",
    # Writing to a class shared by every kernel in the process.
    "class_attribute_write": """
import json
def k(x):
    e = json.JSONEncoder
    e.item_separator = ";"
    return ''
""",
}


@pytest.mark.parametrize("name", sorted(ESCAPES))
def test_escape_attempts_fail_their_chain_and_leak_nothing(r: redis.Redis, name: str) -> None:
    px = Pyrecks(r)
    try:
        px.store_kernel("k", ESCAPES[name].lstrip("\n"))
    except KernelRejected:
        return  # the checker caught it: also fine
    with px.local_vm(echo=False):
        info = px.wait(px.start('k("/etc/hostname")'), timeout=30)
    assert info.status is ChainStatus.FAILED, px.result(info.id)
    assert info.error_kind in ("kernel_error", "lint"), info.error


POISON = """
import json
def _evil(*a, **k):
    return '1 SET [("victim:key", "pwned")]'
def poison():
    m = json
    m.dumps = _evil
    return ''
"""
VICTIM = """
import json
def victim(d: dict):
    return 'return ' + json.dumps(d)
"""


def test_one_kernel_cannot_change_the_modules_other_kernels_use(r: redis.Redis) -> None:
    px = Pyrecks(r)
    px.store_kernel("victim", VICTIM.lstrip("\n"))
    raw_kernel(r, "poison", POISON)
    with px.local_vm(echo=False):
        poisoned = px.wait(px.start("poison()"), timeout=30)
        after = px.wait(px.start('victim({"a": 1})'), timeout=30)
    assert poisoned.status is ChainStatus.FAILED
    # The checker now refuses the alias (PK306); the run-time proxy would refuse the write.
    assert "PK306" in (poisoned.error or "") or "read-only" in (poisoned.error or "")
    assert px.result(after.id) == {"a": 1}
    assert r.get("victim:key") is None


def test_kernels_may_still_set_attributes_on_their_own_objects(r: redis.Redis) -> None:
    px = Pyrecks(r)
    px.store_kernel(
        "own",
        "from pyrecks.kernel import done\n"
        "class Box:\n    pass\n"
        "def own(n: int):\n    b = Box()\n    b.value = n\n    b.value += 1\n"
        "    return done('{0} and {1:>3}'.format(b.value, 'x'))\n",
    )
    with px.local_vm(echo=False):
        info = px.wait(px.start("own(41)"), timeout=30)
    assert info.status is ChainStatus.DONE, info.error
    assert px.result(info.id) == "42 and   x"


def test_reserved_guard_names_cannot_be_shadowed(r: redis.Redis) -> None:
    raw_kernel(r, "shadow", "def shadow():\n    _pyrecks_writable = lambda o: o\n    return ''\n")
    px = Pyrecks(r)
    with px.local_vm(echo=False):
        info = px.wait(px.start("shadow()"), timeout=30)
    assert info.status is ChainStatus.FAILED
    assert info.error_kind == "lint"


def test_effects_cannot_overwrite_a_seed_style_kernel_not_yet_run(r: redis.Redis) -> None:
    raw_kernel(r, "seedk", "def seedk(x):\n    return ''\n")
    raw_kernel(r, "writer", "def writer():\n    return 'SET [(\"seedk\", \"def seedk(x):\\\\n    return 1\")]'\n")
    px = Pyrecks(r)
    with px.local_vm(echo=False):
        info = px.wait(px.start("writer()"), timeout=30)
    assert info.error_kind == "effect"
    assert "seed" in (info.error or "")
    assert r.get("seedk") == b"def seedk(x):\n    return ''\n"


def test_a_refused_effect_leaves_no_log_line_claiming_the_step_went_on(r: redis.Redis) -> None:
    raw_kernel(r, "ret", "def ret(s):\n    return s\n")
    px = Pyrecks(r)
    with px.local_vm(echo=False):
        info = px.wait(px.start('ret("next(1) DEL [\\"pyrecks:chains\\"]")'), timeout=30)
    kinds = [e.kind for e in px.logs(info.id)]
    assert info.error_kind == "effect"
    assert kinds == ["error"]



@pytest.mark.parametrize(
    "source",
    [
        "from pyrecks.kernel import done\ndef\fmade(x):\n    return done('ran: ' + x)\n",
        "from pyrecks.kernel import done\rdef made(x):\r    return done('ran: ' + x)\r",
        "from pyrecks.kernel import done\ndef \\\nmade(x):\n    return done('ran: ' + x)\n",
        "from pyrecks.kernel import done\ndef \uff4dade(x):\n    return done('ran: ' + x)\n",
    ],
    ids=["formfeed", "cr-lines", "line-continuation", "nfkc-name"],
)
@pytest.mark.parametrize("as_hash", [False, True], ids=["string", "hash"])
def test_an_effect_cannot_make_a_kernel_that_python_would_still_compile(
    r: redis.Redis, source: str, as_hash: bool
) -> None:
    """The effect guard looks for a line ``def NAME(``; Python compiles more (a form feed
    after ``def``, lines ended by CR, a continued line, an NFKC twin of the name).  Such
    text may be written by an effect, so the VM must never run it as kernel ``made``."""
    from pyrecks.kernel import call

    compile(source, "<made>", "exec")  # Python would define made() from it
    value = '{"source": src, "compiled": "0"}' if as_hash else "src"
    command = "HSET" if as_hash else "SET"
    raw_kernel(
        r,
        "maker",
        "from pyrecks.kernel import call\n"
        "def maker(src):\n"
        f"    return call('made', 'hi', effects=[('{command}', 'made', {value})])\n",
    )
    px = Pyrecks(r)
    with px.local_vm(echo=False):
        info = px.wait(px.start(call("maker", source)), timeout=30)
    assert info.status is ChainStatus.FAILED, px.result(info.id)
    assert "is not kernel 'made'" in (info.error or ""), info.error
    assert r.exists("made")  # the effect itself was allowed: the text is not a kernel
