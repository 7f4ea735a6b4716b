"""Frames over a stream socket: an 8-byte length, then the payload.

The reading side gives a deadline and a size limit, so a peer that stops answering or sends a
huge frame costs a timeout or an error, never a hang or the reader's memory.
"""

from __future__ import annotations

import os
import select
import struct
import time


class ChannelClosed(EOFError):
    """The other side is gone."""


class FrameTooLarge(OverflowError):
    """The other side announced a frame larger than allowed."""


def send_frame(fd: int, payload: bytes) -> None:
    data = memoryview(struct.pack("<Q", len(payload)) + payload)
    while data:
        written = os.write(fd, data)
        data = data[written:]


def _read_exactly(fd: int, n: int, deadline: float | None) -> bytes:
    chunks, left = [], n
    while left:
        if deadline is not None:
            wait = deadline - time.monotonic()
            if wait <= 0 or not select.select([fd], [], [], wait)[0]:
                raise TimeoutError
        chunk = os.read(fd, min(left, 1 << 20))
        if not chunk:
            raise ChannelClosed
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def read_frame(fd: int, deadline: float | None = None, limit: int | None = None) -> bytes:
    """One frame's payload. Raises TimeoutError past ``deadline`` (a time.monotonic() value),
    :class:`FrameTooLarge` over ``limit`` bytes, :class:`ChannelClosed` when the peer is gone."""
    (size,) = struct.unpack("<Q", _read_exactly(fd, 8, deadline))
    if limit is not None and size > limit:
        raise FrameTooLarge(size)
    return _read_exactly(fd, size, deadline)
