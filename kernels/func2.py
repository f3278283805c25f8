"""The seed's func2 in Python 3: a slow step, then the end of the chain.

The seed slept 10 s to show that Redis stays responsive while a kernel runs; 0.5 s makes
the same point without slowing the demo down.  ``PYRECKS_TIMEOUT`` gives the step a limit
of its own (the policy's default applies otherwise).
"""

import time

from pyrecks.kernel import halt

PYRECKS_TIMEOUT = 5
SLEEP_SECONDS = 0.5


def func2(x: str) -> str:
    print(f"func2 got {x}")
    time.sleep(SLEEP_SECONDS)
    x = x + "-and-we-are-done"
    print(f"func2 says {x}")
    return halt()
