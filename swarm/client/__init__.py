"""The client layer shared by the CLI and the HTTP API: build, check, send and await commands
(`commands`), ask the Hive's queries (`queries`), webhook subscriptions with their secrets
(`webhooks`), and one error type for all of it (`errors`).

It prints nothing and knows no HTTP: each front end presents results and errors its own way.
"""
