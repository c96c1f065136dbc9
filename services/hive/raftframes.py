"""A bound on the frames pysyncobj reads from its Raft port.

pysyncobj frames every message as a 4-byte length and the bytes, and reads whatever arrives into
one buffer until a whole frame is there; only then does it decrypt (the cluster password) and
unpickle it. Nothing bounds the length: anyone who reaches the port could announce a 2 GiB frame
and have the replica buffer it, and the buffer grows by concatenation (quadratic copying), so
64 MB sent to a replica stalled its ticks long enough to move the leadership.

The longest frame a replica sends is one batch of log entries (`RaftConfig`:
`appendEntriesBatchSizeBytes`, 4 MiB) or a single entry longer than that (an entry carries at most
one NATS message, 1 MiB by default), compressed, then encrypted (base64: a third more).
`MAX_FRAME_BYTES` leaves a wide margin above both; a connection that announces more, or that has
more than that buffered, is dropped before any of it is decoded. pysyncobj has no hook for this,
so its connection's read step is wrapped (`install`, idempotent).
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Any

from pysyncobj import tcp_connection

#: The longest frame a replica accepts, and the most it buffers from one connection.
MAX_FRAME_BYTES = 32 * 1024 * 1024
_HEADER = struct.Struct("i")  # pysyncobj's own framing: native-endian int32
_MARK = "_swarm_frame_guard"


def oversized(buffer: bytes, limit: int = MAX_FRAME_BYTES) -> bool:
    """Whether the first frame in `buffer` announces more than `limit` bytes (or a negative
    length), or `buffer` holds more than a frame of `limit` bytes and its header."""
    if len(buffer) > limit + _HEADER.size:
        return True
    if len(buffer) < _HEADER.size:
        return False
    (announced,) = _HEADER.unpack_from(buffer)
    return bool(announced < 0 or announced > limit)


def install() -> None:
    """Wrap pysyncobj's read step so that an oversized frame drops the connection."""
    connection: Any = tcp_connection.TcpConnection
    read: Callable[[Any], bool] = connection._TcpConnection__processRead
    if getattr(read, _MARK, False):
        return

    def guarded(self: Any) -> bool:
        more = read(self)
        if oversized(self._TcpConnection__readBuffer):
            self._TcpConnection__readBuffer = b""
            self.disconnect()
            return False
        return more

    setattr(guarded, _MARK, True)
    connection._TcpConnection__processRead = guarded


__all__ = ["MAX_FRAME_BYTES", "install", "oversized"]
