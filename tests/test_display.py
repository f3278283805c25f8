"""Text from Redis never drives the operator's terminal.

A kernel's error, a chain id chosen by whoever ``XADD``-ed a start, a stored source: printed
raw, ``ESC [2J`` clears the screen, ``ESC ]0;…BEL`` retitles the window and a bidi override
reverses text.  Each command that shows such text is run here (as a subprocess, as a user
would) and its output must hold no control character but newlines and tabs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import redis

from pyrecks.api import Pyrecks
from pyrecks.display import json_safe, one_line, shown
from pyrecks.vm.records import ChainStatus
from tests.vm_helpers import raw_kernel

HOSTILE = "E\x1b[2J\x1b]8;;http://evil/\x07link\x1b]8;;\x07\x9b31m\u202eTXT"


def _controls(text: str) -> list[str]:
    return [
        c
        for c in text
        if (ord(c) < 0x20 and c not in "\n\t")
        or 0x7F <= ord(c) < 0xA0
        or 0x202A <= ord(c) <= 0x202E
        or 0x2066 <= ord(c) <= 0x2069
    ]


def test_controls_are_shown_as_escapes_and_json_stays_the_same_value() -> None:
    assert shown("a\x1b[2Jb\n\tc\u202e") == "a\\x1b[2Jb\n\tc\\u202e"
    assert one_line("a\nb\rc") == "a\\x0ab\\x0dc"
    encoded = json.dumps({"t": HOSTILE}, ensure_ascii=False)
    assert not _controls(json_safe(encoded))
    assert json.loads(json_safe(encoded)) == {"t": HOSTILE}


@pytest.fixture
def hostile_chain(r: redis.Redis) -> str:
    raw_kernel(
        r,
        "esc",
        "def esc(x):\n    print(x)\n    raise ValueError(x)\n",
    )
    px = Pyrecks(r)
    chain = px.start(f"esc({HOSTILE!r})".replace("'", '"'))
    with px.local_vm(echo=False, threads=1):
        info = px.wait(chain, timeout=30)
    assert info.status is ChainStatus.FAILED
    assert "\x1b[2J" in (info.error or "")  # the record keeps what the kernel said
    return chain


@pytest.mark.parametrize(
    "command",
    [["status"], ["logs"], ["logs", "--json"], ["tree"], ["ls"], ["status", "--json"]],
    ids=" ".join,
)
def test_no_command_prints_a_kernels_control_characters(
    hostile_chain: str, redis_url: str, command: list[str]
) -> None:
    args = [*command[:1], hostile_chain, *command[1:]] if command[0] != "ls" else command
    done = subprocess.run(
        [sys.executable, "-m", "pyrecks", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "REDIS_URL": redis_url},
    )
    assert done.returncode == 0, done.stderr
    printed = done.stdout + done.stderr
    assert "2J" in printed or "--json" in command or command == ["tree"]  # it shows the text
    assert not _controls(printed), repr(printed)


def test_a_chain_id_with_control_characters_is_refused_by_one_rule(r: redis.Redis) -> None:
    raw_kernel(r, "okk", "def okk(x):\n    return ''\n")
    px = Pyrecks(r)
    entry = r.xadd(
        "pyrecks:starts", {"call": "okk(1)", "id": "zz\x1b]0;PWNED\x07\nFAKE  done"}
    ).decode()
    with px.local_vm(echo=False, threads=1):
        info = px.wait(entry.replace("-", ""), timeout=30, missing_ok=True)
    assert info.status is ChainStatus.FAILED
    assert "invalid chain id" in (info.error or "")
    with pytest.raises(Exception, match="invalid chain id"):
        px.start("okk(1)", chain_id="a\x1bb")
