"""Every rule and every escape route we know of, as a table: kernel source -> code and line.

Each row is one way a kernel could break out of the sandbox or break purity.  The kernel is
always named ``k`` and the offending line is marked in the row, so adding a case is adding a
row.  A row passes if the checker reports an *error* with that code on that line.
"""

from __future__ import annotations

import textwrap

import pytest

from pyrecks.compiler.checker import check
from pyrecks.compiler.policy import Policy


def _k(body: str, header: str = "") -> str:
    """A kernel ``k`` whose body (indented for you) follows optional module-level lines."""
    return header + "def k(x):\n" + textwrap.indent(textwrap.dedent(body), "    ") + "    return ''\n"


FORBIDDEN: list[tuple[str, str, str, int]] = [
    # PK1xx imports
    ("import os", "import os\n" + _k("pass\n"), "PK101", 1),
    ("from os import path", "from os import path\n" + _k("pass\n"), "PK101", 1),
    ("import importlib", "import importlib\n" + _k("pass\n"), "PK101", 1),
    ("import subprocess in function", _k("import subprocess\n"), "PK101", 2),
    ("import sys as alias", "import sys as s\n" + _k("pass\n"), "PK101", 1),
    ("submodule not listed", "import json.decoder\n" + _k("pass\n"), "PK101", 1),
    ("from json import codecs", "from json import codecs\n" + _k("pass\n"), "PK102", 1),
    ("from datetime import sys", "from datetime import sys\n" + _k("pass\n"), "PK102", 1),
    ("from random private", "from random import _os\n" + _k("pass\n"), "PK102", 1),
    ("typing.get_type_hints", "from typing import get_type_hints\n" + _k("pass\n"), "PK102", 1),
    ("string.Formatter import", "from string import Formatter\n" + _k("pass\n"), "PK102", 1),
    ("relative import", "from . import sibling\n" + _k("pass\n"), "PK103", 1),
    ("star import", "from math import *\n" + _k("pass\n"), "PK104", 1),
    # PK2xx builtins and names
    ("open", _k("open('x')\n"), "PK201", 2),
    ("eval", _k("eval('1')\n"), "PK201", 2),
    ("exec", _k("exec('1')\n"), "PK201", 2),
    ("compile", _k("compile('1', 'f', 'eval')\n"), "PK201", 2),
    ("breakpoint", _k("breakpoint()\n"), "PK201", 2),
    ("globals", _k("globals()['x'] = 1\n"), "PK201", 2),
    ("locals", _k("y = locals()\n"), "PK201", 2),
    ("vars", _k("y = vars()\n"), "PK201", 2),
    ("input", _k("y = input()\n"), "PK201", 2),
    ("help", _k("help(x)\n"), "PK201", 2),
    ("memoryview", _k("memoryview(b'x')\n"), "PK201", 2),
    ("exit", _k("exit(1)\n"), "PK201", 2),
    ("open passed around", _k("f = open\n"), "PK201", 2),
    ("eval as default arg", "def k(x, e=eval):\n    return ''\n", "PK201", 1),
    ("__import__", _k("__import__('os')\n"), "PK201", 2),
    ("__builtins__ subscript", _k("__builtins__['open']('x')\n"), "PK202", 2),
    ("__loader__", _k("y = __loader__\n"), "PK202", 2),
    ("getattr computed concat", _k("getattr(x, '__cl' + 'ass__')\n"), "PK203", 2),
    ("getattr computed name", _k("name = 'a'\ngetattr(x, name)\n"), "PK203", 3),
    ("getattr literal dunder", _k("getattr(x, '__class__')\n"), "PK203", 2),
    ("setattr computed", _k("setattr(x, x, 1)\n"), "PK203", 2),
    ("delattr dunder", _k("delattr(x, '__dict__')\n"), "PK203", 2),
    ("getattr aliased", _k("g = getattr\ng(x, 'a')\n"), "PK203", 2),
    ("getattr via map", _k("list(map(getattr, [x], ['a']))\n"), "PK203", 2),
    ("type three args", _k("T = type('T', (), {})\n"), "PK204", 2),
    ("print file", _k("print('x', file=x)\n"), "PK205", 2),
    (
        "attrgetter dunder",
        "import operator\n" + _k("operator.attrgetter('__class__')(x)\n"),
        "PK203",
        3,
    ),
    (
        "attrgetter computed",
        "from operator import attrgetter\n" + _k("attrgetter(x)(x)\n"),
        "PK203",
        3,
    ),
    (
        "attrgetter passed around",
        "from operator import attrgetter\n" + _k("f = attrgetter\n"),
        "PK206",
        3,
    ),
    # PK3xx attributes and reflection
    ("subclasses walk", _k("().__class__.__bases__[0].__subclasses__()\n"), "PK301", 2),
    ("type().__code__", _k("def f():\n    pass\ntype(f).__code__\n"), "PK301", 4),
    ("__globals__", _k("def f():\n    pass\ny = f.__globals__\n"), "PK301", 4),
    ("__dict__", _k("y = x.__dict__\n"), "PK301", 2),
    ("__reduce_ex__", _k("x.__reduce_ex__(2)\n"), "PK301", 2),
    ("__class__ store", _k("x.__class__ = int\n"), "PK301", 2),
    (
        "generator frame walk",
        _k("g = (i for i in [1])\ny = g.gi_frame.f_back.f_globals\n"),
        "PK302",
        3,
    ),
    ("coroutine frame", _k("y = x.cr_frame\n"), "PK302", 2),
    ("traceback frame", _k("try:\n    1 / 0\nexcept Exception as e:\n    y = e.tb_frame\n"), "PK302", 5),
    ("code object", _k("def f():\n    pass\ny = f.co_code\n"), "PK302", 4),
    ("python 2 func_globals", _k("def f():\n    pass\ny = f.func_globals\n"), "PK302", 4),
    ("mro", _k("y = int.mro()\n"), "PK302", 2),
    ("json.codecs.open", "import json\n" + _k("json.codecs.open('f')\n"), "PK303", 3),
    ("datetime.sys.modules", "import datetime\n" + _k("y = datetime.sys.modules\n"), "PK303", 3),
    ("aliased module", "import dataclasses as d\n" + _k("y = d.sys\n"), "PK303", 3),
    ("typing.sys", "import typing\n" + _k("y = typing.sys\n"), "PK303", 3),
    ("re.enum private", "import re\n" + _k("y = re._compiler\n"), "PK303", 3),
    ("uuid.os", "import uuid\n" + _k("y = uuid.os\n"), "PK303", 3),
    ("random._os", "import random\n" + _k("y = random._os\n"), "PK303", 3),
    ("uuid.getnode", "import uuid\n" + _k("y = uuid.getnode()\n"), "PK303", 3),
    (
        "typing.get_type_hints call",
        "import typing\n" + _k("typing.get_type_hints(x)\n"),
        "PK303",
        3,
    ),
    ("string.Formatter", "import string\n" + _k("string.Formatter().format('{0}', x)\n"), "PK303", 3),
    ("format attribute trick", _k("y = '{0.__class__}'.format(x)\n"), "PK304", 2),
    ("format nested spec", _k("y = '{0:{1.__globals__}}'.format(x, x)\n"), "PK304", 2),
    ("format index then dunder", _k("y = '{0[0].__class__}'.format([x])\n"), "PK304", 2),
    ("format_map trick", _k("y = '{a.__init__.__globals__}'.format_map({'a': x})\n"), "PK304", 2),
    ("str.format unbound", _k("y = str.format('{0.__class__}', x)\n"), "PK304", 2),
    ("format method kept", _k("f = '{0.gi_frame}'.format\n"), "PK304", 2),
    # PK306: a module may only be used as module.attribute (aliasing hid PK303/PK206/PK404)
    ("module alias", "import dataclasses\n" + _k("m = dataclasses\nm._create_fn('f', [], [])\n"), "PK306", 3),
    ("module in a list", "import dataclasses\n" + _k("m = [dataclasses]\nm[0]._create_fn\n"), "PK306", 3),
    (
        "module through an identity helper",
        "import dataclasses\ndef _id(v):\n    return v\n" + _k("_id(dataclasses)._create_fn\n"),
        "PK306",
        5,
    ),
    (
        "operator module alias",
        "import operator\n" + _k("m = operator\ng = m.attrgetter('__glob' + 'als__')\n"),
        "PK306",
        3,
    ),
    ("module alias then write", "import json\n" + _k("m = json\nm.dumps = str\n"), "PK306", 3),
    ("import as, then alias", "import json as j\n" + _k("m = j\n"), "PK306", 3),
    ("dotted import root", "import collections.abc\n" + _k("m = collections\n"), "PK306", 3),
    ("allowed submodule from-import", "from collections import abc\n" + _k("m = abc\n"), "PK306", 3),
    ("module returned", "import json\ndef k(x):\n    return json\n", "PK306", 3),
    ("module in a tuple", "import json\n" + _k("a, b = json, 1\n"), "PK306", 3),
    ("module in a dict", "import json\n" + _k("d = {'j': json}\n"), "PK306", 3),
    ("module compared", "import json\n" + _k("y = x is json\n"), "PK306", 3),
    ("module as keyword argument", "import json\n" + _k("y = dict(m=json)\n"), "PK306", 3),
    ("module in a comprehension", "import json\n" + _k("y = [json for _ in x]\n"), "PK306", 3),
    ("module as a default", "import json\ndef k(x, m=json):\n    return ''\n", "PK306", 2),
    ("module deleted", "import json\n" + _k("import json\ndel json\n"), "PK306", 4),
    ("module module-level alias", "import json\nJ = json\n" + _k("pass\n"), "PK306", 2),
    ("module in a lambda", "import json\n" + _k("f = lambda: json\n"), "PK306", 3),
    (
        "comprehension variable does not shadow the function",
        "import json\n" + _k("y = [0 for json in x]\nm = json\n"),
        "PK306",
        4,
    ),
    ("first iterable is outside the comprehension", "import json\n" + _k("y = [json for json in [json]]\n"), "PK306", 3),
    (
        "class attribute does not shadow in a method",
        "import json\nclass C:\n    json = 1\n    def f(self):\n        return json\n" + _k("pass\n"),
        "PK306",
        5,
    ),
    ("module attribute as for target", "import json\n" + _k("for json.dumps in [str]:\n    pass\n"), "PK306", 3),
    ("module attribute as with target", "import json\n" + _k("with x as json.dumps:\n    pass\n"), "PK306", 3),
    # PK4xx global state
    ("global", "X = 1\n" + _k("global X\nX = 2\n"), "PK401", 3),
    ("nonlocal", _k("y = 1\ndef f():\n    nonlocal y\n    y = 2\n"), "PK401", 4),
    ("append to module list", "CACHE = []\n" + _k("CACHE.append(x)\n"), "PK402", 3),
    ("item set on module dict", "CACHE = {}\n" + _k("CACHE[x] = 1\n"), "PK402", 3),
    ("augassign module item", "COUNTS = {'a': 0}\n" + _k("COUNTS['a'] += 1\n"), "PK402", 3),
    ("del module item", "CACHE = {1: 2}\n" + _k("del CACHE[1]\n"), "PK402", 3),
    ("nested attr", "class C:\n    n = 0\n" + _k("C.n = 5\n"), "PK402", 4),
    ("function attribute", "def h():\n    pass\n" + _k("h.calls = 1\n"), "PK402", 4),
    ("helper mutates", "SEEN = set()\ndef _h(v):\n    SEEN.add(v)\n" + _k("_h(x)\n"), "PK402", 3),
    ("heappush module list", "import heapq\nQ = []\n" + _k("heapq.heappush(Q, x)\n"), "PK402", 4),
    ("shuffle module list", "import random\nL = [1]\n" + _k("random.shuffle(L)\n"), "PK402", 4),
    ("module attribute set", "import math\n" + _k("math.pi = 3\n"), "PK404", 3),
    ("module attribute set top", "import math\nmath.pi = 3\n" + _k("pass\n"), "PK404", 2),
    ("module attribute del", "import json\n" + _k("del json.dumps\n"), "PK404", 3),
    ("module attribute augassign", "import math\n" + _k("math.pi += 1\n"), "PK404", 3),
    ("module attribute set after local import", _k("import json\njson.dumps = str\n"), "PK404", 3),
    ("random.seed", "import random\n" + _k("random.seed(1)\n"), "PK404", 3),
    ("decimal.setcontext", "import decimal\n" + _k("decimal.setcontext(decimal.Context())\n"), "PK404", 3),
    (
        "decimal getcontext prec",
        "import decimal\n" + _k("decimal.getcontext().prec = 5\n"),
        "PK404",
        3,
    ),
    # PK5xx structure and the entry function
    ("module-level call", "print('loading')\n" + _k("pass\n"), "PK501", 1),
    ("module-level loop", "for i in range(3):\n    pass\n" + _k("pass\n"), "PK501", 1),
    ("module-level try", "try:\n    import json\nexcept ImportError:\n    pass\n" + _k("pass\n"), "PK501", 1),
    ("module-level item assign", "D = {}\nD['a'] = 1\n" + _k("pass\n"), "PK501", 2),
    ("module-level with", "with x:\n    pass\n" + _k("pass\n"), "PK501", 1),
    ("module-level if", "if True:\n    Y = 1\n" + _k("pass\n"), "PK501", 1),
    ("load-time helper call", "def _h():\n    return 1\nY = _h()\n" + _k("pass\n"), "PK502", 3),
    ("bad timeout", "PYRECKS_TIMEOUT = 'soon'\n" + _k("pass\n"), "PK503", 1),
    ("negative timeout", "PYRECKS_TIMEOUT = -1\n" + _k("pass\n"), "PK503", 1),
    ("huge timeout", "PYRECKS_TIMEOUT = 10 ** 9\n" + _k("pass\n"), "PK503", 1),
    ("float retries", "PYRECKS_RETRIES = 1.5\n" + _k("pass\n"), "PK503", 1),
    ("no entry function", "def other(x):\n    return ''\n", "PK510", 1),
    ("entry is lambda", "k = lambda x: ''\n", "PK511", 1),
    ("entry is class", "class k:\n    pass\n", "PK511", 1),
    ("entry decorated", "import functools\n@functools.lru_cache\ndef k(x):\n    return ''\n", "PK511", 2),
    ("entry generator", "def k(x):\n    yield ''\n", "PK511", 2),
    ("async def", "async def k(x):\n    return ''\n", "PK512", 1),
    ("await", "def k(x):\n    return ''\nasync def h():\n    await h()\n", "PK512", 3),
    ("lambda yield", _k("f = lambda: (yield)\n"), "PK513", 2),
    ("lambda yield from", _k("f = lambda: (yield from [1])\n"), "PK513", 2),
    ("bare except", _k("try:\n    pass\nexcept:\n    pass\n"), "PK520", 4),
    ("except BaseException", _k("try:\n    pass\nexcept BaseException:\n    pass\n"), "PK520", 4),
    (
        "except tuple with SystemExit",
        _k("try:\n    pass\nexcept (ValueError, SystemExit):\n    pass\n"),
        "PK520",
        4,
    ),
    ("except KeyboardInterrupt", _k("try:\n    pass\nexcept KeyboardInterrupt:\n    y = 1\n"), "PK520", 4),
    ("return in finally", "def k(x):\n    try:\n        pass\n    finally:\n        return ''\n", "PK521", 5),
    ("metaclass", "class M(type):\n    pass\nclass C(metaclass=M):\n    pass\n" + _k("pass\n"), "PK530", 3),
    ("class body statement", "class C:\n    print('x')\n" + _k("pass\n"), "PK531", 2),
    # PK6xx return strings
    ("broken literal", "def k(x):\n    return 'f(\"a\"'\n", "PK601", 2),
    ("unknown effect", "def k(x):\n    return 'f(1) FLUSHALL [1]'\n", "PK601", 2),
    ("non-string return", "def k(x):\n    return 5\n", "PK603", 2),
    # PK9xx Python 2 names
    ("xrange", _k("for i in xrange(3):\n    pass\n"), "PK903", 2),
    ("unicode", _k("y = unicode(x)\n"), "PK903", 2),
    ("basestring", _k("y = isinstance(x, basestring)\n"), "PK903", 2),
]


@pytest.mark.parametrize(
    ("source", "code", "line"),
    [pytest.param(src, code, line, id=name) for name, src, code, line in FORBIDDEN],
)
def test_forbidden_kernel_is_refused_with_code_and_line(source: str, code: str, line: int) -> None:
    findings = check(source, "k", Policy())
    hits = [f for f in findings if f.code == code and f.line == line and f.is_error]
    assert hits, f"expected {code} on line {line}, got: " + "; ".join(map(str, findings))


def test_every_message_says_what_to_do_instead() -> None:
    """Messages are instructions: each is long enough to name an alternative."""
    for _name, source, code, _line in FORBIDDEN:
        for finding in check(source, "k", Policy()):
            if finding.code == code:
                assert len(finding.message) > 40, finding


def test_import_outside_policy_is_allowed_when_the_policy_allows_it() -> None:
    policy = Policy().with_changes(allowed_modules=[*Policy().allowed_modules, "numpy"])
    assert not [f for f in check("import numpy\n" + _k("pass\n"), "k", policy) if f.is_error]


def test_forbidden_builtin_set_comes_from_the_policy() -> None:
    policy = Policy().with_changes(forbidden_builtins=[*Policy().forbidden_builtins, "sorted"])
    findings = check(_k("y = sorted(x)\n"), "k", policy)
    assert [f.code for f in findings if f.is_error] == ["PK201"]


def test_module_alias_message_says_what_to_write() -> None:
    source = "import json\n" + _k("m = json\n")
    (finding,) = [f for f in check(source, "k") if f.is_error]
    assert (finding.code, finding.line, finding.column) == ("PK306", 3, 9)
    assert "json.f(x)" in finding.message and "cannot be stored" in finding.message


def test_direct_module_attribute_write_is_reported_once() -> None:
    source = "import json\n" + _k("json.dumps = str\n")
    assert [f.code for f in check(source, "k") if f.is_error] == ["PK404"]


def test_columns_point_at_the_attribute() -> None:
    (finding,) = [f for f in check(_k("y = x.__dict__\n"), "k") if f.code == "PK301"]
    assert (finding.line, finding.column) == (2, 11)


def test_literal_return_string_error_column_is_kernel_relative() -> None:
    (finding,) = [f for f in check("def k(x):\n    return 'f(\"a\"'\n", "k") if f.is_error]
    assert finding.code == "PK601"
    assert finding.line == 2
    # The fault is at the end of the string (column 7 of the string, after the quote at 12).
    assert finding.column > 12
