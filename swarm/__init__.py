"""Swarm: the shared kernel (`swarm.kernel`) and the user surfaces on top (`swarm.cli`)."""

__version__ = "0.1.0"
