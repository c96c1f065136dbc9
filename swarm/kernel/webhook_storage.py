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

from nats.js import JetStreamContext
from nats.js.api import (
    DiscardPolicy,
    KeyValueConfig,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)
from nats.js.errors import BucketNotFoundError, NotFoundError
from nats.js.kv import KeyValue

from schemas import names
from swarm.kernel.settings import Settings

#: How long attempt records are kept when the dispatcher's setting does not say (seconds).
DEFAULT_RECORDS_MAX_AGE = 7 * 24 * 3600.0


def deliveries_stream_config(settings: Settings, max_age: float) -> StreamConfig:
    return StreamConfig(
        name=names.STREAM_WEBHOOK_DELIVERIES,
        description="Every attempt to deliver an event to a webhook, kept for a limited time.",
        subjects=[names.WEBHOOK_DELIVERIES_ALL],
        retention=RetentionPolicy.LIMITS,
        storage=StorageType.FILE,
        discard=DiscardPolicy.OLD,
        max_age=max_age,
        num_replicas=settings.stream_replicas,
        duplicate_window=min(settings.duplicate_window, max_age),
        allow_direct=True,
    )


async def ensure_deliveries_stream(
    js: JetStreamContext, settings: Settings, max_age: float = DEFAULT_RECORDS_MAX_AGE
) -> None:
    config = deliveries_stream_config(settings, max_age)
    try:
        await js.stream_info(config.name or "")
    except NotFoundError:
        await js.add_stream(config)
    else:
        await js.update_stream(config)


async def _bucket(js: JetStreamContext, settings: Settings, bucket: str, what: str) -> KeyValue:
    try:
        return await js.key_value(bucket)
    except BucketNotFoundError:
        return await js.create_key_value(
            KeyValueConfig(
                bucket=bucket,
                description=what,
                history=1,
                storage=StorageType.FILE,
                replicas=settings.stream_replicas,
            )
        )


async def secrets_bucket(js: JetStreamContext, settings: Settings) -> KeyValue:
    return await _bucket(
        js, settings, names.WEBHOOK_SECRETS_BUCKET, "Webhook signing secrets by webhook id."
    )


async def dead_letters_bucket(js: JetStreamContext, settings: Settings) -> KeyValue:
    return await _bucket(
        js,
        settings,
        names.WEBHOOK_DEAD_LETTERS_BUCKET,
        "Events a webhook gave up on, by <webhook id>.<event sequence>, until redelivered.",
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


async def dead_letter_values(kv: KeyValue, webhook_id: str | None = None) -> list[bytes]:
    """The stored dead letters (JSON) of one subscription, or of all.

    Read with a watcher on the key prefix rather than `keys(filters=…)`, which nats-py matches as
    substrings after listing every key of the bucket.
    """
    pattern = ">" if webhook_id is None else f"{webhook_id}.*"
    watcher = await kv.watch(pattern, ignore_deletes=True)
    values: list[bytes] = []
    try:
        async for entry in watcher:
            if entry is None:
                break  # the watcher's marker: everything stored has been seen
            if entry.value:
                values.append(entry.value)
    finally:
        await watcher.stop()  # type: ignore[no-untyped-call]  # nats-py leaves it unannotated
    return values
