"""The Hive's seal on its outcomes: an ed25519 signature that readers can check.

Anyone who can publish on NATS can write on `swarm.evt.command.<id>.*`. Until the zero-trust
work takes that right away, a reader tells the Hive's outcome from a foreign one by its seal: the
CloudEvents extension `hiveseal`, an ed25519 signature over the outcome's bytes as they were
before the attribute was added.

The attribute is always the last member of the JSON object, spliced in as
`,"hiveseal":"<base64url>"}`, so a reader recovers the signed bytes by cutting it off again,
with no re-serialisation that could differ between writer and reader.

The sealed entries form a chain: each carries, just before its seal (and so under it), the seal
of the entry the Hive sealed before it (`hiveprev`). An entry removed from the log, or from an
exported copy of it, leaves the next one naming a seal that is not the last one before it.

The key is derived from the Hive cluster's shared secret (the Raft password every replica
already holds), so all replicas seal alike with nothing more to distribute; the public key is
all a reader needs (`SWARM_HIVE_PUBLIC_KEY`, `swarm status -o json`).
"""

from __future__ import annotations

import base64
import binascii
from typing import TYPE_CHECKING

from schemas import names

# cryptography is imported where a key is made or a seal checked: most CLI verbs never do
# either, and its import is a tenth of their start-up.
if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import (
        Ed25519PrivateKey,
        Ed25519PublicKey,
    )

_MARK = b',"' + names.EXTENSION_HIVE_SEAL.encode() + b'":"'
_PREVIOUS = b',"' + names.EXTENSION_HIVE_PREVIOUS.encode() + b'":"'
_INFO = b"swarm hive outcome seal v1"
_SIGNATURE_CHARS = 86  # 64 bytes, base64url without padding


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _unb64(text: str | bytes) -> bytes:
    data = text.encode() if isinstance(text, str) else text
    return base64.urlsafe_b64decode(data + b"=" * (-len(data) % 4))


class SealKey:
    """The Hive's signing key. Every replica derives the same one from the cluster secret."""

    def __init__(self, private: Ed25519PrivateKey) -> None:
        self._private = private
        self.public = SealVerifier(private.public_key())

    @classmethod
    def from_secret(cls, secret: str) -> SealKey:
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
        from cryptography.hazmat.primitives.kdf.hkdf import HKDF

        seed = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_INFO).derive(
            secret.encode()
        )
        return cls(Ed25519PrivateKey.from_private_bytes(seed))

    def seal(self, body: bytes, previous: str | None = None) -> bytes:
        """`body` (a JSON object, as `Envelope.to_json` writes it) with the seal appended, and
        before it `previous` (the seal of the entry sealed before this one), when given."""
        if not body.endswith(b"}") or _MARK in body or _PREVIOUS in body:
            raise ValueError("only an unsealed JSON object can be sealed")
        if previous is not None:
            if len(previous) != _SIGNATURE_CHARS or not previous.isascii():
                raise ValueError(f"not a seal: {previous!r}")
            body = body[:-1] + _PREVIOUS + previous.encode() + b'"}'
        signature = _b64(self._private.sign(body)).encode()
        return body[:-1] + _MARK + signature + b'"}'


class SealVerifier:
    """Checks seals against the Hive's public key."""

    def __init__(self, public: Ed25519PublicKey) -> None:
        self._public = public

    @classmethod
    def from_text(cls, text: str) -> SealVerifier:
        """From the base64url form `public_text` gives; ValueError if it is not a key."""
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

        try:
            raw = _unb64(text.strip())
            return cls(Ed25519PublicKey.from_public_bytes(raw))
        except (ValueError, binascii.Error) as exc:
            raise ValueError(f"not an ed25519 public key: {text!r}") from exc

    @property
    def text(self) -> str:
        from cryptography.hazmat.primitives import serialization

        raw = self._public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        return _b64(raw)

    def verify(self, body: bytes) -> bool:
        """True when `body` carries a valid seal of this key."""
        from cryptography.exceptions import InvalidSignature

        cut = body.rfind(_MARK)
        tail = body[cut + len(_MARK) :]
        if cut < 0 or len(tail) != _SIGNATURE_CHARS + 2 or not tail.endswith(b'"}'):
            return False
        try:
            signature = _unb64(tail[:-2])
            self._public.verify(signature, body[:cut] + b"}")
        except (InvalidSignature, ValueError, binascii.Error):
            return False
        return True


def verifier(public_key: str | None) -> SealVerifier | None:
    """The check for `Settings.hive_public_key`, or None when it is not set."""
    return SealVerifier.from_text(public_key) if public_key else None


def entry_digest(body: bytes) -> str:
    """The sha256 an accepted outcome gives for an event it caused: of the event's JSON in a
    canonical form (keys sorted, no spaces), so that it survives `swarm timeline export` and
    `import`, which keep an entry's JSON, not its bytes. ValueError if `body` is not JSON."""
    import json

    return json_digest(json.loads(body))


def json_digest(value: object) -> str:
    """`entry_digest` of an entry already parsed."""
    import hashlib
    import json

    canonical = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


def sealed(body: bytes) -> bool:
    """Whether `body` carries a seal at all (valid or not): for reporting, never for trust."""
    return _MARK in body


__all__ = ["SealKey", "SealVerifier", "entry_digest", "json_digest", "sealed", "verifier"]
