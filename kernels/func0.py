"""The seed's func0 in Python 3: print, append '3', call func1.

The seed built its return string with ``'func1("say hi to func1 with %s")' % x``, which
breaks as soon as ``x`` holds a quote; ``call`` renders and escapes it instead.
"""

from pyrecks.kernel import call


def func0(x: str) -> str:
    print(f"func0 got {x}")
    x = x + "3"
    print(f"func0 says {x}")
    return call("func1", f"say hi to func1 with {x}")
