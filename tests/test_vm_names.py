"""One name, one VM: a second VM under a living VM's name is refused (issue 11, item 8)."""

from __future__ import annotations

import pytest
import redis

from pyrecks.api import Pyrecks
from pyrecks.errors import PyrecksError
from pyrecks.vm.records import ChainStatus
from tests.vm_helpers import raw_kernel


def test_a_second_vm_under_a_living_name_is_refused_and_the_first_keeps_running(
    r: redis.Redis,
) -> None:
    raw_kernel(r, "one", "def one():\n    return 'return 1'\n")
    px = Pyrecks(r)
    with px.local_vm(echo=False, threads=1, name="vm-x"):
        twin = px.vm(echo=False, threads=1, name="vm-x")
        with pytest.raises(PyrecksError) as refused:
            twin.start()
        text = str(refused.value)
        assert "a VM named 'vm-x' is already running" in text
        assert "Choose another --name" in text
        chain = px.start("one()")
        assert px.wait(chain, timeout=30).status is ChainStatus.DONE
    # Stopped cleanly, the name is free again at once.
    with px.local_vm(echo=False, threads=1, name="vm-x"):
        assert px.wait(px.start("one()"), timeout=30).status is ChainStatus.DONE
