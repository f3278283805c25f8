"""Python 2 heuristics: the seed's kernels were Python 2, so say what to write instead.

A kernel that does not parse gets **one** finding: PK901 naming the Python 3 form when the
failing line is recognisably Python 2 (``print 'x'``, ``except E, e:``, backticks, ``0777``,
``10L``, ``<>``, ``raise E, "msg"``), PK902 with Python's own message otherwise.  Python 2
builtins and dict methods that still parse are reported by the checker from the tables here
(PK903, PK904); ``pyrecksc upgrade`` (:mod:`pyrecks.compiler.upgrade`) rewrites the text.
"""

from __future__ import annotations

import re

from pyrecks.compiler.findings import Finding

#: Python 2 builtins that no longer exist, with their Python 3 replacement.
PY2_NAMES = {
    "xrange": "range(...)",
    "unicode": "str(...)",
    "basestring": "str (isinstance(x, str))",
    "long": "int(...)",
    "unichr": "chr(...)",
    "raw_input": "an argument (kernels are not interactive)",
    "execfile": "an import of an allowed module (kernels cannot run files)",
    "reduce": "functools.reduce (from functools import reduce)",
    "cmp": "a key function, or (a > b) - (a < b)",
    "apply": "f(*args, **kwargs)",
    "file": "an argument or an \"@key\" input (kernels do no I/O)",
    "buffer": "bytes(...)",
    "intern": "a plain str",
}

PY2_METHODS = {
    "iteritems": "items()",
    "iterkeys": "keys()",
    "itervalues": "values()",
    "has_key": "'key in d'",
    "viewitems": "items()",
    "viewkeys": "keys()",
    "viewvalues": "values()",
}



_PY2_PATTERNS: list[tuple[re.Pattern[str], str]] = [
    (
        re.compile(r"^\s*print\s*>>"),
        "Python 2 'print >>f, x' statement: kernels write output with print(x) (it goes to "
        "the chain log) and may not write to files",
    ),
    (
        re.compile(r"^\s*print(?:\s+(?![\s=(])|\s*$)"),
        "Python 2 print statement: in Python 3 print is a function, write {fix}",
    ),
    (
        re.compile(r"\bexcept\s+([^,:]+?)\s*,\s*([A-Za-z_]\w*)\s*:"),
        "Python 2 'except E, e:' clause: write 'except {g1} as {g2}:'",
    ),
    (re.compile(r"`"), "Python 2 backticks: write repr(x) instead of `x`"),
    (
        re.compile(r"^\s*exec\s+[\"'\w(]"),
        "Python 2 exec statement: exec is a function in Python 3, and kernels may not run "
        "code from strings at all; write the code in the kernel",
    ),
    (
        re.compile(r"(?<![\w.])0([0-7]+)\b"),
        "Python 2 octal literal: write 0o{g1}",
    ),
    (
        re.compile(r"(?<![\w])[uU][rR](?=[\"'])"),
        "Python 2 ur'' string prefix: write r'' (every str is unicode in Python 3)",
    ),
    (re.compile(r"<>"), "Python 2 '<>' operator: write '!='"),
    (
        re.compile(r"^\s*raise\s+([\w.]+)\s*,\s*(.+?)\s*$"),
        "Python 2 'raise E, msg' statement: write 'raise {g1}({g2})'",
    ),
    (re.compile(r"\b(\d+)[lL]\b"), "Python 2 long literal: write {g1} (int has no size limit)"),
]


def syntax_finding(source: str, exc: SyntaxError) -> Finding:
    """One PK901 finding naming the Python 3 form for Python 2 code, else PK902."""
    lineno = exc.lineno or 1
    lines = source.splitlines()
    text = lines[lineno - 1] if 0 < lineno <= len(lines) else ""
    for pattern, template in _PY2_PATTERNS:
        match = pattern.search(text)
        if match is None:
            continue
        groups = {f"g{i}": g for i, g in enumerate(match.groups(), start=1)}
        fix = ""
        if "{fix}" in template:
            rest = text[match.end() :].strip() if match.end() < len(text) else ""
            if rest.endswith(","):
                fix = f"print({rest[:-1].rstrip()}, end=' ')"
            else:
                fix = f"print({rest})"
        message = template.format(fix=fix, **groups)
        return Finding("PK901", "error", message, lineno, match.start() + 1)
    message = exc.msg
    if "Missing parentheses in call to 'print'" in message:
        message = "Python 2 print statement: in Python 3 print is a function, write print(...)"
        return Finding("PK901", "error", message, lineno, exc.offset or 1)
    return Finding(
        "PK902",
        "error",
        f"syntax error: {message}; kernels are Python 3 modules (check the line and the one "
        "before it)",
        lineno,
        exc.offset or 1,
    )
