"""What a NATS server tells a client it refused: a permissions violation is no answer to the
publish or subscribe that caused it, the server sends it on its own (nats-py's `error_cb`)."""

from __future__ import annotations

import asyncio


class Errors:
    """The errors a connection heard (pass `hear` as its `error_cb`)."""

    def __init__(self) -> None:
        self.seen: list[str] = []
        self.new = asyncio.Event()

    async def hear(self, exc: Exception) -> None:
        self.seen.append(str(exc))
        self.new.set()

    async def violation(self, subject: str, timeout: float = 30) -> str:
        """The first permissions violation naming `subject`, once the server sent it."""

        async def wait() -> str:
            while True:
                found = [e for e in self.seen if "permissions violation" in e.lower()]
                hit = [e for e in found if subject.lower() in e.lower()]
                if hit:
                    return hit[0]
                self.new.clear()
                await self.new.wait()

        return await asyncio.wait_for(wait(), timeout)


__all__ = ["Errors"]
