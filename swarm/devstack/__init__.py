"""The local development stack: what `swarm up` runs on one machine. The stack itself, its data
dir, lock and state file, its start order and what `swarm down` and `swarm status` read of it,
and the database schema upgrade it runs before the services (`stack`); the process supervisor
that keeps the services alive with restart backoff (`supervisor`); and the embedded nats-server
and PostgreSQL+pgvector servers it starts from the installed wheels, with `free_port` and the
parent-death signal every child gets (`embedded`).

It is apart from `swarm.kernel` because no Swarm process needs it to run: the services, the pods
and the HTTP API talk to whatever NATS and PostgreSQL their settings name, and a deployment
(`docker-compose.yml`) starts them itself, borrowing only the schema upgrade (`swarm migrate`)
and the credentials its `init` service writes (`compose`: the stack's principals and TLS, made
for a cluster).
The CLI's stack verbs (`swarm up`, `down`, `status`, `migrate`), the tests (with
`services.hive.testing`, which runs Hive replicas for them) and the benchmarks use it. It builds
on the kernel (settings, the event-log client) and never imports the services it supervises: it
runs them as modules by name, so it sits below them in the layers and the kernel never imports it.

The modules load when imported (`from swarm.devstack import stack`), not with the package, so a
CLI verb pays only for what it uses.
"""

__all__ = [
    "embedded",
    "stack",
    "supervisor",
]
