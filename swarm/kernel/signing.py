"""Commands signed by their sender: who sent a command is what the Hive verifies, not what the
command claims.

A sender holds an nkey (ed25519; `swarm.devstack.principals` issues one to every process of a
stack). Its client appends two CloudEvents extension attributes to every command it publishes,
as the last members of the JSON object: `swarmsigner`, its public key (`U…`), then
`swarmsig`, an ed25519 signature over the bytes up to and including the signer. A reader
recovers the signed bytes by cutting the signature off again (as `swarm.kernel.seal` does for
the Hive's outcomes), so nothing is re-serialised between signing and checking.

Signatures are deterministic, so a command sent again is the same bytes (and deduplicated).

Mesh messages (requests to agents and their replies, `swarm.mesh.…`) are not stored and their
body is the agent's own bytes, so their signature travels in headers instead
(`names.HEADER_MESH_*`, `MeshClaim`): the signer, the identity it acts as, for an agent the
replica and its placement, the time of signing, a random nonce, and an ed25519 signature over
all of these with the subject and the body (`mesh_signature_of` checks it; the receiving pod
decides what the signer may claim, runtime/meshguard.py).

Queries (`swarm.query.…`, request/reply, not stored) are signed in headers the same way, without
a claim: a query is its signer's. The signature covers the subject, the time of signing and
the body (`query_signature_of` checks it); the answering service binds the request to its
signer by its reply subject and its time (`swarm.kernel.queryguard`).
"""

from __future__ import annotations

import base64
import binascii
import functools
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, TypeVar

from schemas import names

if TYPE_CHECKING:
    from nacl.signing import SigningKey, VerifyKey

_SIGNER = b',"' + names.EXTENSION_SIGNER.encode() + b'":"'
_SIGNATURE = b',"' + names.EXTENSION_SIGNATURE.encode() + b'":"'
_SIGNATURE_CHARS = 86  # 64 bytes, base64url without padding
#: How far the signing time of a mesh message or a query may be from its receiver's clock: one
#: replayed later is refused (runtime/meshguard.py, `swarm.kernel.queryguard`).
FRESH_S = 120.0
P = TypeVar("P")
#: nkeys' prefix byte of a user's public key (base32 `U…`) and of a seed (`S…`).
_USER_PREFIX = 20 << 3


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


class CommandSigner:
    """Signs command bodies with one principal's key."""

    def __init__(self, private: SigningKey, public_key: str) -> None:
        self._private = private
        self.public_key = public_key

    @classmethod
    def from_seed_file(cls, path: Path) -> CommandSigner:
        """From an nkey seed file (`S…`, as NATS tools and nats-py's `nkeys_seed=` read)."""
        import nkeys
        from nacl.signing import SigningKey

        seed = bytearray(path.read_bytes().strip())
        _, raw = nkeys.decode_seed(seed)
        pair = nkeys.from_seed(seed)
        public = pair.public_key.decode()
        pair.wipe()
        return cls(SigningKey(bytes(raw)), public)

    def sign(self, body: bytes) -> bytes:
        """`body` (a JSON object) with the signer and its signature appended; a body signed
        already is returned as it is."""
        if _SIGNATURE in body:
            return body
        if not body.endswith(b"}"):
            raise ValueError("only a JSON object can be signed")
        signed = body[:-1] + _SIGNER + self.public_key.encode() + b'"}'
        signature = _b64(self._private.sign(signed).signature).encode()
        return signed[:-1] + _SIGNATURE + signature + b'"}'

    def mesh_headers(
        self, subject: str, body: bytes, claim: MeshClaim, time_ms: int, nonce: str | None = None
    ) -> dict[str, str]:
        """The headers that sign a mesh message on `subject` with `body`, sent as `claim`.
        `nonce`: drawn afresh by default, so no two messages have one signature (a pod refuses
        a signature it has seen, runtime/meshguard.py: a message sent again is signed again)."""
        nonce = _b64(os.urandom(_NONCE_BYTES)) if nonce is None else nonce
        signed = _mesh_bytes(subject, claim, time_ms, nonce, body)
        headers = {
            names.HEADER_MESH_SIGNER: self.public_key,
            names.HEADER_MESH_IDENTITY: claim.identity,
            names.HEADER_MESH_TIME: str(time_ms),
            names.HEADER_MESH_NONCE: nonce,
            names.HEADER_MESH_SIGNATURE: _b64(self._private.sign(signed).signature),
        }
        if claim.replica:
            headers[names.HEADER_MESH_REPLICA] = claim.replica
            headers[names.HEADER_MESH_PLACED] = str(claim.placed_seq)
        return headers

    def query_headers(self, subject: str, body: bytes, time_ms: int) -> dict[str, str]:
        """The headers that sign a query on `subject` with `body` (`query_signature_of`)."""
        signature = self._private.sign(_query_bytes(subject, time_ms, body)).signature
        return {
            names.HEADER_MESH_SIGNER: self.public_key,
            names.HEADER_MESH_TIME: str(time_ms),
            names.HEADER_MESH_SIGNATURE: _b64(signature),
        }


@dataclass(frozen=True, slots=True)
class MeshClaim:
    """Who a mesh message says it is from: `identity` (`kind:name`, as a command's), and for an
    agent (`agent:<agent id>`) the replica that sent it and the sequence of the
    `replica_scheduled` event that placed that replica on the signing pod: a receiver that has
    read the log that far knows whether the claim holds."""

    identity: str
    replica: str = ""
    placed_seq: int = 0


@dataclass(frozen=True, slots=True)
class MeshSignature:
    """What a mesh message's signature says (`mesh_signature_of`)."""

    signer: str
    claim: MeshClaim
    #: When the sender signed it (ms since the epoch, its clock).
    time_ms: int
    valid: bool
    #: Why it does not hold.
    problem: str | None = None
    #: The nonce it was signed with ("" when it carries none).
    nonce: str = ""


#: Bytes that begin every signed mesh message, so no other signed thing (a command) can pass
#: for one. v2: with a nonce.
_MESH_DOMAIN = b"swarm.mesh.v2"
#: Random bytes of a mesh message's nonce: 96 bits, no collision in any pod's lifetime.
_NONCE_BYTES = 12


def _mesh_bytes(subject: str, claim: MeshClaim, time_ms: int, nonce: str, body: bytes) -> bytes:
    # Header values and subjects hold no newline: each field ends at one, the body comes last.
    fields = (subject, claim.identity, claim.replica, str(claim.placed_seq), str(time_ms), nonce)
    return b"\n".join((_MESH_DOMAIN, *(f.encode() for f in fields), body))


def mesh_signature_of(
    subject: str, body: bytes, headers: Mapping[str, str] | None, *, verify: bool = True
) -> MeshSignature | None:
    """The signature a mesh message carries in its headers, checked against the key it names;
    None when it carries none. With `verify=False` it is only read (`valid`: well-formed), to
    be checked later by `verify_mesh` (a pod checks who may claim what on its event loop, and
    the signature on the worker thread that then runs the agent: libsodium runs without the
    GIL)."""
    if not headers or names.HEADER_MESH_SIGNATURE not in headers:
        return None
    signer = headers.get(names.HEADER_MESH_SIGNER, "")
    try:
        claim = MeshClaim(
            headers.get(names.HEADER_MESH_IDENTITY, ""),
            headers.get(names.HEADER_MESH_REPLICA, ""),
            int(headers.get(names.HEADER_MESH_PLACED) or 0),
        )
        time_ms = int(headers.get(names.HEADER_MESH_TIME, ""))
    except ValueError:
        return MeshSignature(signer, MeshClaim(""), 0, False, "its signing time is not a number")
    nonce = headers.get(names.HEADER_MESH_NONCE, "")
    signature = MeshSignature(signer, claim, time_ms, True, nonce=nonce)
    problem = verify_mesh(subject, body, headers, signature) if verify else None
    if problem is not None:
        return MeshSignature(signer, claim, time_ms, False, problem, nonce)
    return signature


def verify_mesh(
    subject: str, body: bytes, headers: Mapping[str, str], signature: MeshSignature
) -> str | None:
    """Why the signature `mesh_signature_of(..., verify=False)` read from `headers` does not
    hold for `subject` and `body`; None when it holds."""
    from nacl.exceptions import BadSignatureError

    try:
        key = _verify_key(signature.signer)
        raw = base64.urlsafe_b64decode(headers[names.HEADER_MESH_SIGNATURE].encode() + b"==")
        signed = _mesh_bytes(subject, signature.claim, signature.time_ms, signature.nonce, body)
        key.verify(signed, raw)
    except (BadSignatureError, binascii.Error):
        return "the signature does not match the message"
    except ValueError as exc:
        return str(exc)
    return None


@dataclass(frozen=True, slots=True)
class QuerySignature:
    """What a query's signature says (`query_signature_of`)."""

    signer: str
    #: When the sender signed it (ms since the epoch, its clock).
    time_ms: int
    valid: bool
    #: Why it does not hold.
    problem: str | None = None


class SignedAt(Protocol):
    """A signature in headers (`MeshSignature`, `QuerySignature`), read without checking the
    ed25519 arithmetic: who signed, when, and whether it is well formed."""

    @property
    def signer(self) -> str: ...

    @property
    def time_ms(self) -> int: ...

    @property
    def valid(self) -> bool: ...

    @property
    def problem(self) -> str | None: ...


class Receiver(Protocol):
    """Who takes signed messages: how far from its clock a signing time may be."""

    window_ms: float
    clock: Callable[[], float]


def signer_of(
    signature: SignedAt,
    principal_of: Callable[[str], P | None],
    receiver: Receiver,
    *,
    what: str,
    taker: str,
) -> P | str:
    """The principal that signed (`principal_of` its public key), or why the signature counts
    as nobody's (`unauthenticated: …`; `what`: "message" or "query", `taker`: who takes it, "the
    mesh", "this stack"): malformed, a stranger's key, or signed outside `receiver`'s window.

    The checks that cost nothing, which the mesh's guard (runtime/meshguard.py) and the query
    guard (`swarm.kernel.queryguard`) make before the signature's arithmetic: a stranger's or a
    stale message is refused without ed25519 work.
    """
    if not signature.valid:
        return f"unauthenticated: the {what}'s signature does not hold: {signature.problem}"
    principal = principal_of(signature.signer)
    if principal is None:
        return (
            f"unauthenticated: the {what} is signed by {signature.signer[:60]!r}, "
            "which is no principal of this stack"
        )
    age_ms = receiver.clock() * 1000 - signature.time_ms
    if abs(age_ms) > receiver.window_ms:
        when = f"{age_ms / 1000:.0f} s ago" if age_ms > 0 else f"{-age_ms / 1000:.0f} s ahead"
        return (
            f"unauthenticated: the {what} was signed {when}, outside the "
            f"{receiver.window_ms / 1000:g} s {taker} takes (replayed, or a clock is off)"
        )
    return principal


#: Bytes that begin every signed query: neither a mesh message's signature nor a command's
#: passes for one.
_QUERY_DOMAIN = b"swarm.query.v1"


def _query_bytes(subject: str, time_ms: int, body: bytes) -> bytes:
    return b"\n".join((_QUERY_DOMAIN, subject.encode(), str(time_ms).encode(), body))


def query_signature_of(
    subject: str, body: bytes, headers: Mapping[str, str] | None, *, verify: bool = True
) -> QuerySignature | None:
    """The signature a query carries in its headers, checked against the key it names; None
    when it carries none. With `verify=False` it is only read (`valid`: well-formed), so that
    a receiver can refuse a stranger's or a stale query before it spends ~110 us on the
    arithmetic (then `query_signature_of` again, verifying)."""
    from nacl.exceptions import BadSignatureError

    if not headers or names.HEADER_MESH_SIGNATURE not in headers:
        return None
    signer = headers.get(names.HEADER_MESH_SIGNER, "")
    try:
        time_ms = int(headers.get(names.HEADER_MESH_TIME, ""))
    except ValueError:
        return QuerySignature(signer, 0, False, "its signing time is not a number")
    if not verify:
        return QuerySignature(signer, time_ms, True)
    try:
        key = _verify_key(signer)
        raw = base64.urlsafe_b64decode(headers[names.HEADER_MESH_SIGNATURE].encode() + b"==")
        key.verify(_query_bytes(subject, time_ms, body), raw)
    except (BadSignatureError, binascii.Error):
        return QuerySignature(signer, time_ms, False, "the signature does not match the query")
    except ValueError as exc:
        return QuerySignature(signer, time_ms, False, str(exc))
    return QuerySignature(signer, time_ms, True)


@dataclass(frozen=True, slots=True)
class Signature:
    """What a command's signature says: who signed it, and whether it holds."""

    signer: str
    valid: bool
    #: Why it does not hold.
    problem: str | None = None


def signature_of(body: bytes) -> Signature | None:
    """The signature `body` carries, checked against the public key it names; None when it
    carries none."""
    from nacl.exceptions import BadSignatureError

    cut = body.rfind(_SIGNATURE)
    if cut < 0:
        return None
    tail = body[cut + len(_SIGNATURE) :]
    start = body.rfind(_SIGNER, 0, cut)
    signer = body[start + len(_SIGNER) : cut - 1].decode("ascii", "replace") if start >= 0 else ""
    if start < 0 or len(tail) != _SIGNATURE_CHARS + 2 or not tail.endswith(b'"}'):
        return Signature(signer, False, "the signature is not the last member of the command")
    try:
        key = _verify_key(signer)
        raw = base64.urlsafe_b64decode(tail[:-2] + b"==")
        key.verify(body[:cut] + b"}", raw)
    except ValueError as exc:
        return Signature(signer, False, str(exc))
    except (BadSignatureError, binascii.Error):
        return Signature(signer, False, "the signature does not match the command's bytes")
    return Signature(signer, True)


@functools.lru_cache(maxsize=1024)
def _verify_key(nkey: str) -> VerifyKey:
    """The key object of `nkey`, kept. libsodium (PyNaCl, which nkeys brings) checks a
    signature in ~110 us here where OpenSSL (cryptography) took ~180 us, and signs in ~45 us
    (~65): the Hive checks every command, so that is its share of `bench/security.py`."""
    from nacl.signing import VerifyKey

    return VerifyKey(public_key_bytes(nkey))


def public_key_bytes(nkey: str) -> bytes:
    """The 32 raw bytes of a user's nkey public key (`U…`: base32 of a prefix byte, the key and
    a CRC16). nkeys (the Python package) decodes seeds, not public keys; this is its format."""
    import nkeys

    try:
        raw = base64.b32decode(nkey + "=" * (-len(nkey) % 8))
    except (binascii.Error, ValueError):
        raise ValueError(f"not an nkey: {nkey[:60]!r}") from None
    if len(raw) != 35 or raw[0] != _USER_PREFIX:
        raise ValueError(f"not a user's nkey: {nkey[:60]!r}")
    if bytes(nkeys.crc16_checksum(bytearray(raw[:-2]))) != raw[-2:]:
        raise ValueError(f"nkey {nkey[:60]!r} fails its checksum")
    return raw[1:-2]


__all__ = [
    "FRESH_S",
    "CommandSigner",
    "MeshClaim",
    "MeshSignature",
    "QuerySignature",
    "Receiver",
    "Signature",
    "SignedAt",
    "mesh_signature_of",
    "public_key_bytes",
    "query_signature_of",
    "signature_of",
    "signer_of",
    "verify_mesh",
]
