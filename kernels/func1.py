"""The seed's func1 in Python 3: repeat the input three times, call func2."""

from pyrecks.kernel import call


def func1(x: str) -> str:
    print(f"func1 got {x}")
    x = x * 3
    print(f"func1 says {x}")
    return call("func2", f"say hi to func2 with {x}")
