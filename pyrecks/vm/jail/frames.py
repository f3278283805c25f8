"""The wire between the VM, its zygote and its cells: length-prefixed msgpack frames.

Every frame is a 4-byte big-endian length followed by one msgpack array.  Both ends use
plain ``os.read``/``os.write`` on a stream socket, because those are the only calls a
cell's seccomp filter lets it make on its channel.

Frames from a cell are **untrusted input**: a kernel that broke out of the purity guards
owns its cell and may write any bytes to its channel.  :func:`read_frame` therefore refuses
oversized frames before reading them, and unpacks with msgpack's own size limits and
``raw=False`` (invalid UTF-8 is an error, not a surprise further on); the executor then
checks the shape of every message (see :mod:`pyrecks.vm.jail.executor`).
"""

from __future__ import annotations

import os
import select
import struct
import time
from typing import Any

import msgpack

_HEADER = struct.Struct(">I")

#: Largest frame the VM accepts from a cell: the longest return string the language allows
#: (``Limits.max_length``, 1 MB of text, up to 4 MB of UTF-8) plus a traceback and framing.
MAX_CELL_FRAME = 5 * 1024 * 1024
#: Frames the VM sends (arguments, bytecode) may be larger: they are trusted.
MAX_VM_FRAME = 512 * 1024 * 1024

#: The shape of every frame a cell or the zygote sends: a short array of strings and
#: integers (``["line", text]``, ``["ok", text]``, ``["error", kind, message, tb]``,
#: ``["forked", pid]`` …), never a map, bytes or an extension.  msgpack's own limits scale
#: with the buffer, so without these a 5 MB frame of one-byte empty maps made the VM build
#: five million dicts (about 370 MB) before any shape check ran.
UNTRUSTED_SHAPE: dict[str, int] = {
    "max_array_len": 8,
    "max_map_len": 0,
    "max_bin_len": 0,
    "max_ext_len": 0,
}


class ChannelClosed(Exception):
    """The other end closed the channel (or died)."""


class BadFrame(Exception):
    """A frame that is too large, not msgpack, not valid UTF-8, or of the wrong shape."""


def pack_frame(message: list[Any] | tuple[Any, ...]) -> bytes:
    body = msgpack.packb(message, use_bin_type=True)
    return _HEADER.pack(len(body)) + body


def write_frame(
    fd: int, message: list[Any] | tuple[Any, ...], *, deadline: float | None = None
) -> None:
    """Write one frame completely (a stream socket may accept it in pieces).

    With a ``deadline`` (monotonic) the fd must be non-blocking: the VM never waits longer
    than a step may take on a cell that stopped reading; ``TimeoutError`` then.
    """
    data = memoryview(pack_frame(message))
    while data:
        try:
            sent = os.write(fd, data)
        except BlockingIOError:
            left = 0.0 if deadline is None else deadline - time.monotonic()
            if left <= 0 or not select.select([], [fd], [], left)[1]:
                raise TimeoutError from None
            continue
        data = data[sent:]


def _read_exactly(fd: int, count: int, deadline: float | None) -> bytes:
    chunks: list[bytes] = []
    while count:
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                raise TimeoutError
        try:
            chunk = os.read(fd, min(count, 1 << 20))
        except BlockingIOError:  # select said readable, but nothing came: wait again
            continue
        if not chunk:
            raise ChannelClosed
        chunks.append(chunk)
        count -= len(chunk)
    return b"".join(chunks)


def read_frame(
    fd: int, *, limit: int, deadline: float | None = None, trusted: bool = False
) -> list[Any]:
    """Read one frame; ``TimeoutError`` if ``deadline`` (monotonic) passes first.

    A frame that says it is larger than ``limit`` is refused *before* it is read, so a
    hostile cell cannot make the VM allocate what it likes; an untrusted frame (from a cell
    or the zygote) is decoded under :data:`UNTRUSTED_SHAPE`, so its size in memory stays
    near its size on the wire.  ``trusted``: a frame the VM sent (read by a cell).
    """
    (size,) = _HEADER.unpack(_read_exactly(fd, _HEADER.size, deadline))
    if size > limit:
        raise BadFrame(f"a frame of {size} bytes (the limit is {limit})")
    body = _read_exactly(fd, size, deadline)
    try:
        message = msgpack.unpackb(
            body,
            raw=False,
            strict_map_key=True,
            use_list=True,
            **({} if trusted else UNTRUSTED_SHAPE),
        )
    except (ValueError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError) as exc:
        # UnicodeDecodeError is a ValueError: invalid UTF-8 ends up here.
        raise BadFrame(f"not a valid frame: {exc}") from None
    if not isinstance(message, list) or not message or not isinstance(message[0], str):
        raise BadFrame("a frame must be a list that starts with its kind")
    return message
