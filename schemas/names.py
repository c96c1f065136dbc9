"""Every stream, subject, consumer, bucket and object-store name of Swarm, defined once.

Nothing outside this module spells a subject or a stream as a string literal: components build
subjects with the functions below so that a rename is one edit and a typo is an import error.
"""

from __future__ import annotations

import re
from typing import Final, Literal

# --- Streams -------------------------------------------------------------------------------------

STREAM_COMMANDS: Final = "SWARM_COMMANDS"
STREAM_EVENTS: Final = "SWARM_EVENTS"
STREAM_METRICS: Final = "SWARM_METRICS"
STREAM_LOGS: Final = "SWARM_LOGS"

# --- Subject roots -------------------------------------------------------------------------------

ROOT: Final = "swarm"
COMMANDS_PREFIX: Final = "swarm.cmd"
EVENTS_PREFIX: Final = "swarm.evt"
METRICS_PREFIX: Final = "swarm.metrics"
LOGS_PREFIX: Final = "swarm.logs"
QUERY_PREFIX: Final = "swarm.query"
MESH_PREFIX: Final = "swarm.mesh"

COMMANDS_ALL: Final = f"{COMMANDS_PREFIX}.>"
EVENTS_ALL: Final = f"{EVENTS_PREFIX}.>"
METRICS_ALL: Final = f"{METRICS_PREFIX}.>"
LOGS_ALL: Final = f"{LOGS_PREFIX}.>"

# Outcomes are events on the aggregate "command", keyed by the command id.
OUTCOME_AGGREGATE: Final = "command"
OUTCOME_ACCEPTED: Final = "accepted"
OUTCOME_REJECTED: Final = "rejected"
#: Stands in for the command id when a command could not be parsed far enough to read one.
INVALID_COMMAND_ID: Final = "_invalid"

#: The Hive's own facts (leader elections), keyed by replica node name.
HIVE_AGGREGATE: Final = "hive"

#: Which payload field holds the aggregate id, per aggregate.
AGGREGATE_ID_FIELDS: Final = {
    "agent": "agent_id",
    "pod": "pod_id",
    "namespace": "name",
    OUTCOME_AGGREGATE: "command_id",
    HIVE_AGGREGATE: "node",
}

#: CloudEvents extension attribute on every outcome the Hive writes: its ed25519 signature over
#: the outcome's bytes as they are without the attribute (`swarm.kernel.seal`). Readers that know
#: the Hive's public key ignore outcomes without a valid one: anyone else can write on NATS.
EXTENSION_HIVE_SEAL: Final = "hiveseal"
#: The seal of the entry the Hive sealed before this one (`swarm.kernel.seal`): the Hive's
#: entries form a chain, so one removed from the log (or from an export) shows.
EXTENSION_HIVE_PREVIOUS: Final = "hiveprev"
#: A command's sender, as the public key of its nkey (`swarm.kernel.signing`), and its
#: signature over the command's bytes: the Hive verifies who sent a command, not who it says.
EXTENSION_SIGNER: Final = "swarmsigner"
EXTENSION_SIGNATURE: Final = "swarmsig"

# --- Queries and heartbeats (core NATS request/reply, not stored) --------------------------------

QUERY_AGENTS_LIST: Final = f"{QUERY_PREFIX}.agents.list"
QUERY_AGENTS_GET: Final = f"{QUERY_PREFIX}.agents.get"
QUERY_PODS_LIST: Final = f"{QUERY_PREFIX}.pods.list"
QUERY_NAMESPACES_LIST: Final = f"{QUERY_PREFIX}.namespaces.list"
#: Who holds which role where (`swarm.cmd.access.grant`): events `swarm.evt.access.<user>.*`.
QUERY_ACCESS_LIST: Final = f"{QUERY_PREFIX}.access.list"
ACCESS_AGGREGATE: Final = "access"
AGGREGATE_ID_FIELDS[ACCESS_AGGREGATE] = "user"
QUERY_DIGEST: Final = f"{QUERY_PREFIX}.state.digest"
QUERY_STATE: Final = f"{QUERY_PREFIX}.state.full"
#: Any replica answers; `<QUERY_STATUS>.<node>` reaches one replica (convergence checks).
QUERY_STATUS: Final = f"{QUERY_PREFIX}.hive.status"
#: Queue group so that one replica answers each query.
QUERY_QUEUE: Final = "hive"
HEARTBEAT_PREFIX: Final = "swarm.heartbeat"


def heartbeat_subject(pod_id: str) -> str:
    """Pods renew their lease by publishing here (core NATS: a heartbeat is not an event)."""
    return f"{HEARTBEAT_PREFIX}.{_check_token('pod id', pod_id)}"


PROBE_PREFIX: Final = "swarm.probe"


def probe_subject(pod_id: str) -> str:
    """Request/reply: the Hive asks a pod whose heartbeats are late whether it is still there,
    before declaring it lost; the pod answers from the thread that sends its heartbeats."""
    return f"{PROBE_PREFIX}.{_check_token('pod id', pod_id)}"


#: Where NATS clients take replies by default (`_INBOX.<unique>`); a `swarm up` stack gives each
#: principal its own prefix under it (`inbox_prefix`).
INBOX_ROOT: Final = "_INBOX"


def inbox_prefix(public_key: str) -> str:
    """The inbox prefix of the principal with nkey `public_key`: its replies arrive under it,
    and it alone may subscribe there (`swarm.devstack.principals.permissions`)."""
    return f"{INBOX_ROOT}.{_check_token('public key', public_key)}"


# --- Object stores, KV buckets and durable consumers ---------------------------------------------

OBJECT_STORE_MODULES: Final = "swarm-modules"

#: Durable consumer names; one per independent reader so each keeps its own position.
CONSUMER_HIVE_COMMANDS: Final = "hive-commands"
CONSUMER_HIVE_PROJECTION: Final = "hive-projection"

# --- CloudEvents ---------------------------------------------------------------------------------

CLOUDEVENTS_SPECVERSION: Final = "1.0"
CONTENT_TYPE_JSON: Final = "application/json"
EVENT_TYPE_PREFIX: Final = "swarm"
DATASCHEMA_PREFIX: Final = "swarm:schemas"

# --- Headers -------------------------------------------------------------------------------------

HEADER_MSG_ID: Final = "Nats-Msg-Id"
HEADER_EXPECTED_LAST_SUBJECT_SEQ: Final = "Nats-Expected-Last-Subject-Sequence"
HEADER_EXPECTED_STREAM: Final = "Nats-Expected-Stream"
#: The stream's last sequence an append expects (the Hive leader's fence against a deposed one).
HEADER_EXPECTED_LAST_SEQ: Final = "Nats-Expected-Last-Sequence"
#: Lets the expected sequence cover a wildcard (all subjects of one aggregate); nats-server 2.11+.
HEADER_EXPECTED_LAST_SUBJECT_SEQ_SUBJECT: Final = "Nats-Expected-Last-Subject-Sequence-Subject"

# --- Validation ----------------------------------------------------------------------------------

#: Command ids double as `Nats-Msg-Id` and as a subject token in outcome subjects.
TOKEN_PATTERN: Final = r"^[A-Za-z0-9_-]{1,64}$"
_TOKEN = re.compile(TOKEN_PATTERN)
_NAME = re.compile(r"^[a-z][a-z0-9_-]{0,63}$")

Outcome = Literal["accepted", "rejected"]


def is_token(value: str) -> bool:
    """True when `value` may stand alone as one NATS subject token (and as a command id)."""
    return bool(_TOKEN.fullmatch(value))


def _check_name(kind: str, value: str) -> str:
    if not _NAME.fullmatch(value):
        raise ValueError(f"{kind} {value!r} must match {_NAME.pattern}")
    return value


def _check_token(kind: str, value: str) -> str:
    if not is_token(value):
        raise ValueError(f"{kind} {value!r} must match {TOKEN_PATTERN}")
    return value


def command_subject(domain: str, verb: str) -> str:
    """`swarm.cmd.<domain>.<verb>`, which is also the command's CloudEvents `type`."""
    return f"{COMMANDS_PREFIX}.{_check_name('domain', domain)}.{_check_name('verb', verb)}"


def event_subject(aggregate: str, aggregate_id: str, event: str) -> str:
    """`swarm.evt.<aggregate>.<id>.<event>`; one subject per aggregate instance and event."""
    return (
        f"{EVENTS_PREFIX}.{_check_name('aggregate', aggregate)}."
        f"{_check_token('aggregate id', aggregate_id)}.{_check_name('event', event)}"
    )


def aggregate_subjects(aggregate: str, aggregate_id: str) -> str:
    """Wildcard covering every event of one aggregate instance (for optimistic concurrency)."""
    return (
        f"{EVENTS_PREFIX}.{_check_name('aggregate', aggregate)}."
        f"{_check_token('aggregate id', aggregate_id)}.*"
    )


def event_type(aggregate: str, event: str) -> str:
    """The CloudEvents `type` of an event, e.g. `swarm.agent.running`."""
    return (
        f"{EVENT_TYPE_PREFIX}.{_check_name('aggregate', aggregate)}.{_check_name('event', event)}"
    )


def outcome_subject(command_id: str, outcome: Outcome) -> str:
    """Where the one outcome of a command is written."""
    return event_subject(OUTCOME_AGGREGATE, command_id, outcome)


def outcome_wildcard(command_id: str) -> str:
    """Both possible outcome subjects of one command."""
    return aggregate_subjects(OUTCOME_AGGREGATE, command_id)


def dataschema(type_: str, version: int) -> str:
    """The `dataschema` URI naming a payload's schema and version."""
    return f"{DATASCHEMA_PREFIX}/{type_}/v{version}"


def parse_event_subject(subject: str) -> tuple[str, str, str] | None:
    """Split `swarm.evt.<aggregate>.<id>.<event>` into its parts; None for anything else."""
    parts = subject.split(".")
    if len(parts) != 5 or f"{parts[0]}.{parts[1]}" != EVENTS_PREFIX:
        return None
    return parts[2], parts[3], parts[4]


def metrics_subject(source: str, name: str) -> str:
    return f"{METRICS_PREFIX}.{_check_token('source', source)}.{_check_name('metric', name)}"


def logs_subject(source: str, level: str) -> str:
    return f"{LOGS_PREFIX}.{_check_token('source', source)}.{_check_name('level', level)}"


# --- Agent mesh and state snapshots (runtime pods) -----------------------------------------------

MESH_AGENT_PREFIX: Final = f"{MESH_PREFIX}.agent"
MESH_TOPIC_PREFIX: Final = f"{MESH_PREFIX}.topic"
#: JetStream KV bucket of agent kv-state snapshots, one key per replica id.
SNAPSHOTS_BUCKET: Final = "swarm-snapshots"


def mesh_agent_subject(namespace: str, name: str) -> str:
    """Direct messages to one agent (core NATS request/reply; one replica answers each)."""
    return (
        f"{MESH_AGENT_PREFIX}.{_check_token('namespace', namespace)}."
        f"{_check_token('agent name', name)}"
    )


def mesh_topic_subject(topic: str) -> str:
    """Topic fan-out: every subscriber gets each message."""
    return f"{MESH_TOPIC_PREFIX}.{_check_token('topic', topic)}"


#: Headers of a mesh reply: the agent's own return code, or a platform error (body is JSON).
HEADER_AGENT_STATUS: Final = "Swarm-Status"
HEADER_AGENT_ERROR: Final = "Swarm-Error"
#: Headers of a signed mesh message, request or reply (`swarm.kernel.signing.MeshClaim`): who
#: signed (an nkey, `U…`), the identity it acts as (`user:<name>`, `service:<name>`,
#: `agent:<agent id>`), for an agent the replica and its placement (the sequence of its
#: `replica_scheduled` event), when it was signed (ms since the epoch), a nonce (random, so
#: that two sends of the same body in one millisecond are two messages, not a replay: a pod
#: refuses a signature it has taken already, runtime/meshguard.py), and the signature.
HEADER_MESH_SIGNER: Final = "Swarm-Signer"
HEADER_MESH_IDENTITY: Final = "Swarm-Identity"
HEADER_MESH_REPLICA: Final = "Swarm-Replica"
HEADER_MESH_PLACED: Final = "Swarm-Placed"
HEADER_MESH_TIME: Final = "Swarm-Signed-At"
HEADER_MESH_NONCE: Final = "Swarm-Nonce"
HEADER_MESH_SIGNATURE: Final = "Swarm-Signature"
# A query (`swarm.query.…`) is signed with three of the same headers: signer, signing time and
# signature (`swarm.kernel.signing.CommandSigner.query_headers`). It claims no identity: a query
# is its signer's (`swarm.kernel.queryguard`).


# --- Autoscaling and task queues (scheduler) -----------------------------------------------------

#: The metric name under which pods publish their replicas' counters (`metrics_subject`).
METRIC_AGENT: Final = "agent"
STREAM_TASKS: Final = "SWARM_TASKS"
TASKS_PREFIX: Final = "swarm.task"
TASKS_ALL: Final = f"{TASKS_PREFIX}.>"
MESH_REPLICA_PREFIX: Final = f"{MESH_PREFIX}.replica"
#: The scheduler's task distributor: one durable pull consumer shared by its instances.
CONSUMER_TASK_DISTRIBUTOR: Final = "task-distributor"
#: On a task: where the distributor publishes the answer of the replica that handled it.
HEADER_TASK_REPLY: Final = "Swarm-Reply-To"


def metrics_wildcard(name: str) -> str:
    """One metric of every source, e.g. every pod's `agent` samples."""
    return f"{METRICS_PREFIX}.*.{_check_name('metric', name)}"


def task_subject(queue: str) -> str:
    """Where producers send tasks for a named queue (JetStream, work-queue retention)."""
    return f"{TASKS_PREFIX}.{_check_token('task queue', queue)}"


def task_queue_of(subject: str) -> str | None:
    """The queue a task subject names; None for anything else."""
    prefix = f"{TASKS_PREFIX}."
    if not subject.startswith(prefix) or not is_token(subject[len(prefix) :]):
        return None
    return subject[len(prefix) :]


def mesh_replica_subject(replica_id: str) -> str:
    """Direct messages to one replica (no queue group): how the distributor hands out a task."""
    return f"{MESH_REPLICA_PREFIX}.{_check_token('replica id', replica_id)}"


# --- Scheduler market (queries answered by the scheduler, not the Hive) --------------------------

#: The scheduler's queries (a `swarm up` stack lets its principal alone listen there).
QUERY_MARKET_PREFIX: Final = f"{QUERY_PREFIX}.market"
#: Offers with their current prices, and the most recent clearings with their reasons.
QUERY_MARKET_STATE: Final = f"{QUERY_MARKET_PREFIX}.state"

# --- Webhooks (subscriptions, their delivery records and dead letters) ---------------------------

#: Subscriptions are an aggregate of the audit log: `swarm.evt.webhook.<webhook id>.<event>`.
WEBHOOK_AGGREGATE: Final = "webhook"
AGGREGATE_ID_FIELDS[WEBHOOK_AGGREGATE] = "webhook_id"
QUERY_WEBHOOKS_LIST: Final = f"{QUERY_PREFIX}.webhooks.list"
#: Every attempt to deliver an event to a subscriber, kept for a limited time (not the audit log:
#: a busy subscription makes many attempts, and they are operational data).
STREAM_WEBHOOK_DELIVERIES: Final = "SWARM_WEBHOOK_DELIVERIES"
WEBHOOK_DELIVERIES_PREFIX: Final = "swarm.webhooks.deliveries"
WEBHOOK_DELIVERIES_ALL: Final = f"{WEBHOOK_DELIVERIES_PREFIX}.>"
#: Signing secrets by webhook id, kept out of the log (which anyone who reads the log can read).
WEBHOOK_SECRETS_BUCKET: Final = "swarm-webhook-secrets"
#: Events given up on, one key per (webhook id, event sequence), until redelivered.
WEBHOOK_DEAD_LETTERS_BUCKET: Final = "swarm-webhook-dead"
#: Durable consumer of one subscription on SWARM_EVENTS; its position is the subscription's.
CONSUMER_WEBHOOK_PREFIX: Final = "webhook"
#: Headers of the Standard Webhooks specification (lower case, as the spec writes them).
HEADER_WEBHOOK_ID: Final = "webhook-id"
HEADER_WEBHOOK_TIMESTAMP: Final = "webhook-timestamp"
HEADER_WEBHOOK_SIGNATURE: Final = "webhook-signature"
#: The CloudEvents HTTP binding's media type for structured mode.
CONTENT_TYPE_CLOUDEVENTS_JSON: Final = "application/cloudevents+json"


def webhook_consumer(webhook_id: str) -> str:
    return f"{CONSUMER_WEBHOOK_PREFIX}-{_check_token('webhook id', webhook_id)}"


def webhook_delivery_subject(webhook_id: str, event_seq: int) -> str:
    """Attempts to deliver the event at `event_seq` to one subscription (the last one is read
    back to tell whether an event redelivered after a crash had already been delivered)."""
    return f"{WEBHOOK_DELIVERIES_PREFIX}.{_check_token('webhook id', webhook_id)}.{int(event_seq)}"


def webhook_deliveries_of(webhook_id: str | None = None) -> str:
    """Every attempt of one subscription, or of all."""
    if webhook_id is None:
        return WEBHOOK_DELIVERIES_ALL
    return f"{WEBHOOK_DELIVERIES_PREFIX}.{_check_token('webhook id', webhook_id)}.>"


def webhook_dead_letter_key(webhook_id: str, event_seq: int) -> str:
    return f"{_check_token('webhook id', webhook_id)}.{int(event_seq)}"


# --- Timeline export (a CloudEvents JSON batch) ---------------------------------------------------
# Extension attributes `swarm timeline export` adds to each event so that `import` can put it
# back on the same stream and subject; `import` removes them again before appending.

EXPORT_ATTR_STREAM: Final = "swarmstream"
EXPORT_ATTR_SUBJECT: Final = "swarmsubject"
EXPORT_ATTR_SEQ: Final = "swarmseq"
EXPORT_CONTENT_TYPE: Final = "application/cloudevents-batch+json"
#: Type of the CloudEvent that carries, base64-encoded in `data_base64`, a log entry that is not
#: a CloudEvent itself (a foreign writer's bytes), so an export loses nothing.
EXPORT_RAW_TYPE: Final = "org.swarm.timeline.raw"

# --- Observer ------------------------------------------------------------------------------------

#: The pods' per-replica counters (`metrics_subject(pod, "agent")`), the metrics the Observer reads.
OBSERVER_METRICS: Final = f"{METRICS_PREFIX}.*.agent"
#: The Observer is a stream-processing app (swarm.kernel.streaming) of this name: its tables'
#: changelog is `changelog_stream(OBSERVER_APP)`, SWARM_CHANGELOG_OBSERVER.
OBSERVER_APP: Final = "observer"
#: Its processors, also the names of their durable consumers on SWARM_METRICS and SWARM_LOGS.
OBSERVER_METRICS_PROCESSOR: Final = "observer_metrics"
OBSERVER_LOGS_PROCESSOR: Final = "observer_logs"
#: Its tables: per agent, the windows in progress and counts (every message) and the detectors
#: (every closed window); per namespace, the centroid of its agents' behaviour.
OBSERVER_TABLE_WINDOWS: Final = "windows"
OBSERVER_TABLE_DETECTORS: Final = "detectors"
OBSERVER_TABLE_DEPLOYMENTS: Final = "deployments"
#: Per pod (and for the cluster, key `*`), machine-wide deviations of the agents on it.
OBSERVER_TABLE_MACHINES: Final = "machines"


# --- Stream processing (swarm.kernel.streaming) --------------------------------------------------

#: Table changelogs of stream-processing apps (faust tables): one stream per app for its plain
#: tables and positions, one per windowed table (kept only as long as its windows); one message
#: per table key (`max_msgs_per_subject=1`, like a compacted Kafka topic), replayed into the
#: tables when the app starts.
CHANGELOG_STREAM_PREFIX: Final = "SWARM_CHANGELOG_"
CHANGELOG_PREFIX: Final = "swarm.changelog"
#: Table names are subject tokens; this one holds each processor's last committed position.
CHANGELOG_POSITIONS: Final = "_positions"
#: Events a stream-processing app could not process (malformed, or its handler kept failing),
#: kept with the reason; one subject per app and processor.
STREAM_DEADLETTER: Final = "SWARM_DEADLETTER"
DEADLETTER_PREFIX: Final = "swarm.deadletter"
DEADLETTER_ALL: Final = f"{DEADLETTER_PREFIX}.>"
#: Headers on a dead letter: why, and where the original event sits.
HEADER_DEADLETTER_REASON: Final = "Swarm-Deadletter-Reason"
HEADER_DEADLETTER_STREAM: Final = "Swarm-Deadletter-Stream"
HEADER_DEADLETTER_SEQ: Final = "Swarm-Deadletter-Seq"
HEADER_DEADLETTER_SUBJECT: Final = "Swarm-Deadletter-Subject"
_APP = re.compile(r"^[a-z][a-z0-9_]{0,31}$")


def _check_app(kind: str, value: str) -> str:
    if not _APP.fullmatch(value):
        raise ValueError(f"{kind} {value!r} must match {_APP.pattern}")
    return value


def changelog_stream(app: str, windowed_table: str | None = None) -> str:
    """The changelog stream of an app (`SWARM_CHANGELOG_OBSERVER`), or of one of its windowed
    tables (`SWARM_CHANGELOG_OBSERVER-RECENT`)."""
    stream = f"{CHANGELOG_STREAM_PREFIX}{_check_app('app', app).upper()}"
    if windowed_table is None:
        return stream
    return f"{stream}-{_check_app('table', windowed_table).upper()}"


def changelog_table_prefix(app: str, table: str) -> str:
    """`swarm.changelog.<app>.<table>`; each key of the table is one more token after it."""
    if table != CHANGELOG_POSITIONS:
        _check_app("table", table)
    return f"{CHANGELOG_PREFIX}.{_check_app('app', app)}.{table}"


def deadletter_subject(app: str, processor: str) -> str:
    return f"{DEADLETTER_PREFIX}.{_check_app('app', app)}.{_check_app('processor', processor)}"


# --- Scheduler (services/scheduler) ---------------------------------------------------------------

#: The scheduler's stream app (`swarm.kernel.streaming`): its changelog is
#: `SWARM_CHANGELOG_SCHEDULER`, its tables `pods` and `agents`.
SCHEDULER_APP: Final = "scheduler"
#: Its processor over SWARM_EVENTS, and that processor's durable consumer.
SCHEDULER_PROCESSOR: Final = "scheduler"

# --- Hive (services/hive) -------------------------------------------------------------------------

#: Every `hive.leader_elected` event, whichever replica was elected.
LEADER_ELECTIONS: Final = f"{EVENTS_PREFIX}.{HIVE_AGGREGATE}.*.leader_elected"

#: Where the Hive moves a command it could not answer after `max_deliveries` attempts (with the
#: reason in `HEADER_DEADLETTER_REASON`); the command still gets its rejected outcome.
HIVE_DEADLETTER: Final = deadletter_subject("hive", "commands")
