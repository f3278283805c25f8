"""Python 2 kernels (the seed's format) get one PK901 error naming the Python 3 form."""

from __future__ import annotations

import pytest

from pyrecks.compiler.checker import check

SEED_FUNC0 = (
    "def func0(x):\n\tprint 'func0 got %s' % x\n\tx = x + '3'\n\tprint 'func0 says %s' % x\n"
    "\treturn 'func1(\"say hi to func1 with %s\")' % x"
)

CASES = [
    ("print string", "def k(x):\n    print 'x'\n    return ''\n", 2, "print('x')"),
    ("print percent", "def k(x):\n    print \"a %s\" % x\n    return ''\n", 2, "print(\"a %s\" % x)"),
    ("print trailing comma", "def k(x):\n    print x,\n    return ''\n", 2, "end=' '"),
    ("print chevron", "def k(x):\n    print >>f, x\n    return ''\n", 2, "print(x)"),
    (
        "except comma",
        "def k(x):\n    try:\n        pass\n    except ValueError, e:\n        pass\n    return ''\n",
        4,
        "except ValueError as e:",
    ),
    ("backticks", "def k(x):\n    y = `x`\n    return ''\n", 2, "repr(x)"),
    ("exec statement", "def k(x):\n    exec \"y = 1\"\n    return ''\n", 2, "exec is a function"),
    ("octal", "def k(x):\n    y = 0777\n    return ''\n", 2, "0o777"),
    ("ur prefix", "def k(x):\n    y = ur'abc'\n    return ''\n", 2, "r''"),
    ("not equal", "def k(x):\n    return x <> 1\n", 2, "'!='"),
    ("raise comma", "def k(x):\n    raise ValueError, 'bad'\n", 2, "raise ValueError('bad')"),
    ("long literal", "def k(x):\n    y = 10L\n    return ''\n", 2, "write 10"),
]


@pytest.mark.parametrize(
    ("source", "line", "hint"), [pytest.param(s, ln, h, id=n) for n, s, ln, h in CASES]
)
def test_python2_construct_gets_one_clear_error(source: str, line: int, hint: str) -> None:
    findings = check(source, "k")
    assert len(findings) == 1
    (finding,) = findings
    assert finding.code == "PK901"
    assert finding.line == line
    assert "Python 2" in finding.message
    assert hint in finding.message


def test_the_seeds_func0_is_explained() -> None:
    (finding,) = check(SEED_FUNC0, "func0")
    assert finding.code == "PK901"
    assert finding.line == 2
    assert "print('func0 got %s' % x)" in finding.message


def test_other_syntax_errors_are_pk902() -> None:
    (finding,) = check("def k(x:\n    return ''\n", "k")
    assert finding.code == "PK902"
    assert finding.line == 1


def test_python2_methods_warn() -> None:
    findings = check("def k(d):\n    for a, b in d.iteritems():\n        pass\n    return ''\n", "k")
    assert [(f.code, f.severity) for f in findings] == [("PK904", "warning")]


def test_null_bytes_are_a_syntax_error() -> None:
    (finding,) = check("def k(x):\n    return ''\x00\n", "k")
    assert finding.code == "PK902"
