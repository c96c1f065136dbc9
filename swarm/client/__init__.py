"""The client layer shared by the CLI and the HTTP API. `Swarm` (`swarm`) is the one object a
program holds: typed verbs over everything below. Beneath it: build, check, send and await
commands (`commands`), ask the Hive's queries (`queries`), webhook subscriptions with their secrets
(`webhooks`), and one error type for all of it (`errors`); an aggregate's recent history
(`history`), agents' log lines (`logs`), the scheduler's market (`market`), queueing tasks
(`tasks`), causation trees (`trace`), and how users write times and how untrusted text is shown
(`text`); reading the log filtered and in order (`timeline`), the Hive's state at a point of it
(`timetravel`), what is wrong with it (`verify`), and moving it to another stack (`transfer`);
what a WebAssembly module is (`modules`); agents that behave alike, from the Observer's vectors
(`behaviour`).

It prints nothing and knows no HTTP: each front end presents results and errors its own way.
The modules load when imported (`from swarm.client import commands`), not with the package, so
a CLI verb pays only for what it uses.
"""

__all__ = [
    "behaviour",
    "commands",
    "errors",
    "history",
    "logs",
    "market",
    "modules",
    "queries",
    "swarm",
    "tasks",
    "text",
    "timeline",
    "timetravel",
    "trace",
    "transfer",
    "verify",
    "webhooks",
]
