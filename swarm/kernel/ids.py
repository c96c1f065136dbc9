"""Ids that are the same for the same inputs but that nobody without the key can predict.

Swarm's services derive the ids of the commands they send from what the commands are about (a
scheduler's proposal from the request it answers, the reconcile loop's `pod.expire` from the
pod's lease), so a command sent again after a crash is dropped as a duplicate by JetStream. An id
anyone can compute is also an id anyone can pre-empt: a foreign outcome written on
`swarm.evt.command.<id>.*` before the command exists would stand in its way. So the part that
makes an id unique is an HMAC of those inputs under a secret the service keeps
(`SWARM_COMMAND_ID_SECRET`, created by `swarm up`); without a secret a process draws a random
one, and its ids then change when it restarts (a repeated command then reaches the Hive twice,
which answers the second one on its own state).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

#: 26 base32 characters: 130 bits of the MAC.
_TAG_CHARS = 26


class IdKey:
    """Derives unguessable, repeatable id parts."""

    def __init__(self, key: bytes) -> None:
        if len(key) < 16:
            raise ValueError("an id key needs at least 16 bytes")
        self._key = key

    @classmethod
    def from_secret(cls, secret: str, purpose: str) -> IdKey:
        """A key for `purpose` from a shared secret (each purpose gets its own key)."""
        key = HKDF(
            algorithm=hashes.SHA256(), length=32, salt=None, info=f"swarm ids {purpose}".encode()
        ).derive(secret.encode())
        return cls(key)

    @classmethod
    def random(cls) -> IdKey:
        return cls(secrets.token_bytes(32))

    @classmethod
    def of(cls, secret: str | None, purpose: str) -> IdKey:
        """From `Settings.command_id_secret` when set, else a random key for this process."""
        return cls.from_secret(secret, purpose) if secret else cls.random()

    def tag(self, *parts: object) -> str:
        """A token-safe digest of `parts` (lowercase base32, 26 characters)."""
        message = "\x1f".join(str(p) for p in parts).encode()
        mac = hmac.new(self._key, message, hashlib.sha256).digest()
        return base64.b32encode(mac).decode().lower()[:_TAG_CHARS]

    def derive(self, prefix: str, *parts: object) -> str:
        """`<prefix>-<tag of prefix and parts>`: a command id (at most 64 characters)."""
        command_id = f"{prefix}-{self.tag(prefix, *parts)}"
        if len(command_id) > 64:
            raise ValueError(f"prefix {prefix!r} is too long for an id")
        return command_id


__all__ = ["IdKey"]
