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

It is also the front ends' one door to the layers below (`lint-imports` holds the CLI and the
HTTP API to it): the log client, its connect recipe and its errors (`eventlog`), the `SWARM_*`
variables read before the settings (`env`) and the settings (`settings`), the service
lifecycle, logging and cancel-until-done (`lifecycle`), the keys that sign and check
(`signing`), the Hive's role rules (`access`) and a stack's principals and API tokens
(`principals`), each the kernel's, the domain's or the dev stack's own code under a client name.

It prints nothing and knows no HTTP: each front end presents results and errors its own way.
The modules load when imported (`from swarm.client import commands`), not with the package, so
a CLI verb pays only for what it uses.
"""

__all__ = [
    "access",
    "behaviour",
    "commands",
    "env",
    "errors",
    "eventlog",
    "history",
    "lifecycle",
    "logs",
    "market",
    "modules",
    "principals",
    "queries",
    "settings",
    "signing",
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
