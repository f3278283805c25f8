"""The VM's side of the cell channel decodes untrusted frames under a fixed shape.

msgpack's own limits scale with the buffer: a 5 MB frame of one-byte empty maps made the VM
build five million dicts (hundreds of MB per cell) before the executor's shape check ran.
"""

from __future__ import annotations

import socket
import struct
import threading

import msgpack
import pytest

from pyrecks.vm.jail.frames import MAX_CELL_FRAME, MAX_VM_FRAME, BadFrame, pack_frame, read_frame


def _send(raw: bytes) -> socket.socket:
    """The reading end of a channel whose other end writes ``raw`` (from a thread: a frame
    may be larger than the socket's buffer) and closes."""
    ours, theirs = socket.socketpair()

    def write() -> None:
        with theirs:
            theirs.sendall(raw)

    threading.Thread(target=write, daemon=True).start()
    return ours


def _frame(body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + body


@pytest.mark.parametrize(
    ("name", "body", "says"),
    [
        # array32 of a million empty maps: refused at its header, nothing built
        ("many_maps", b"\xdd" + struct.pack(">I", 1 << 20) + b"\x80" * (1 << 20), "array"),
        ("a_map", msgpack.packb(["ok", {"a": 1}]), "map"),
        ("bytes", msgpack.packb(["ok", b"x" * 10], use_bin_type=True), "bin"),
        ("long_array", msgpack.packb(["line", *["x"] * 20]), "array"),
    ],
)
def test_an_untrusted_frame_outside_the_shape_is_refused_before_it_is_built(
    name: str, body: bytes, says: str
) -> None:
    with _send(_frame(body)) as sock, pytest.raises(BadFrame) as refused:
        read_frame(sock.fileno(), limit=MAX_CELL_FRAME, deadline=None)
    assert says in str(refused.value), (name, str(refused.value))


def test_the_frames_a_cell_sends_pass_and_trusted_frames_may_carry_bytes() -> None:
    for message in (["line", "hi"], ["ok", "return 1"], ["error", "kernel", "m", "tb"]):
        with _send(pack_frame(message)) as sock:
            assert read_frame(sock.fileno(), limit=MAX_CELL_FRAME) == message
    run = ["run", "k", "digest", {"timeout": 1.0}, b"\x00" * 100]
    with _send(pack_frame(run)) as sock:
        assert read_frame(sock.fileno(), limit=MAX_VM_FRAME, trusted=True) == run
