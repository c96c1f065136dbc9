"""The `swarm` command line: stack verbs, publishing commands, reading the log."""
