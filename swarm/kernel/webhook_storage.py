"""Where webhook deliveries keep their books: attempt records, dead letters, signing secrets.

Shared by the dispatcher (which writes them) and the clients (which write secrets and read the
rest), so both create them the same way and whichever comes first makes them. Creating a stream
or bucket that exists with the same config is a no-op in JetStream.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os

from schemas import names
from swarm.kernel.admin import Bucket, LogAdmin
from swarm.kernel.eventlog import EventLog

#: How long attempt records are kept when the dispatcher's setting does not say (seconds).
DEFAULT_RECORDS_MAX_AGE = 7 * 24 * 3600.0


async def ensure_deliveries_stream(log: EventLog, max_age: float = DEFAULT_RECORDS_MAX_AGE) -> None:
    """Create SWARM_WEBHOOK_DELIVERIES, or bring its age limit up to date."""
    await LogAdmin(log).ensure_limited_stream(
        names.STREAM_WEBHOOK_DELIVERIES,
        [names.WEBHOOK_DELIVERIES_ALL],
        "Every attempt to deliver an event to a webhook, kept for a limited time.",
        max_age=max_age,
    )


async def secrets_bucket(log: EventLog) -> Bucket:
    return await LogAdmin(log).bucket(
        names.WEBHOOK_SECRETS_BUCKET, description="Webhook signing secrets by webhook id."
    )


async def dead_letters_bucket(log: EventLog) -> Bucket:
    return await LogAdmin(log).bucket(
        names.WEBHOOK_DEAD_LETTERS_BUCKET,
        description="Events a webhook gave up on, by <webhook id>.<event sequence>, "
        "until redelivered.",
    )


# --- secrets -------------------------------------------------------------------------------------

SECRET_PREFIX = "whsec_"
#: Bytes of a generated key (Standard Webhooks asks for 24 to 64).
SECRET_BYTES = 32


def new_secret() -> str:
    """A Standard Webhooks secret: `whsec_` and the base64 of random key bytes."""
    return SECRET_PREFIX + base64.b64encode(os.urandom(SECRET_BYTES)).decode()


def secret_key(secret: str) -> bytes:
    """The key bytes of a `whsec_…` (or bare base64) secret; ValueError when it is not one."""
    text = secret.removeprefix(SECRET_PREFIX)
    try:
        key = base64.b64decode(text + "==", validate=False)
    except (binascii.Error, ValueError) as exc:
        raise ValueError(f"the secret is not base64: {exc}") from None
    if not 24 <= len(key) <= 64:
        raise ValueError(f"the secret's key must be 24 to 64 bytes, not {len(key)}")
    return key


def fingerprint(secret: str) -> str:
    """Names a secret on the log without revealing it: the first 16 hex digits of sha256(key)."""
    return hashlib.sha256(secret_key(secret)).hexdigest()[:16]


async def dead_letter_values(bucket: Bucket, webhook_id: str | None = None) -> list[bytes]:
    """The stored dead letters (JSON) of one subscription, or of all."""
    return await bucket.values(">" if webhook_id is None else f"{webhook_id}.*")
