"""Start of the seed's demo chain: start -> func0 -> func1 -> func2.

The seed ran a separate start.py script; here it is an ordinary kernel, so the chain can be
started with ``pyrecks run start`` (or a ``redis-cli XADD``) like any other.
"""

from pyrecks.kernel import call


def start():
    return call("func0", "start ...")
