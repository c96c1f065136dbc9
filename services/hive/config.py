"""Hive replica settings (`SWARM_HIVE_*`)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Self

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from services.hive.raft import RaftConfig
from swarm.devstack.principals import Roster, load
from swarm.kernel.ids import IdKey
from swarm.kernel.seal import SealKey

_MIN_PASSWORD = 8
_PREFIX = "SWARM_HIVE_"


class HiveSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix=_PREFIX, extra="ignore", frozen=True)

    #: This replica's Raft address (host:port) and the other replicas' addresses.
    raft_self: str = "127.0.0.1:4321"
    raft_peers: list[str] = Field(default_factory=list)
    #: Where the Raft port listens (host:port). Unset: on `raft_self`'s own address, never on
    #: every interface (pysyncobj's default binds 0.0.0.0 whatever `raft_self` says). Set it
    #: where `raft_self` is an address the replica does not own (NAT, port forwarding).
    raft_bind: str | None = None
    #: Shared secret of the Raft cluster. Required: without it pysyncobj runs whatever pickle
    #: reaches its port. Given outright, or (`raft_password_file`, what `swarm up` does) as a
    #: file that only the Hive's user can read, so that it is in no process' environment.
    raft_password: str = Field(default="", repr=False)
    raft_password_file: Path | None = None
    #: Where the Raft journal and snapshots are kept.
    data_dir: Path = Path(".swarm/hive")
    #: Name of this replica in queries and logs (defaults to one derived from raft_self).
    node: str | None = None
    #: The stack's principals (`principals.json`, as `swarm up` writes it): when given, the
    #: Hive takes only commands signed by one of them, acting as an identity its role may claim
    #: (`swarm.kernel.signing`, `swarm.domain.policy.check_principal`).
    principals_file: Path | None = None

    @model_validator(mode="after")
    def _one_password(self) -> Self:
        # Named as variables: a Hive is configured by its environment (`settings.load`).
        given, from_file = f"{_PREFIX}RAFT_PASSWORD", f"{_PREFIX}RAFT_PASSWORD_FILE"
        if self.raft_password_file is not None:
            if self.raft_password:
                raise ValueError(f"give {given} or {from_file}, not both")
            try:
                text = self.raft_password_file.read_text().strip()
            except OSError as exc:
                raise ValueError(f"{from_file}: cannot read it: {exc}") from None
            object.__setattr__(self, "raft_password", text)
            given = f"the file {from_file} names"
        elif not self.raft_password:
            raise ValueError(f"{given} (or {from_file}) is required")
        if len(self.raft_password) < _MIN_PASSWORD:
            raise ValueError(f"{given} must have at least {_MIN_PASSWORD} characters")
        return self

    @model_validator(mode="after")
    def _readable_principals(self) -> Self:
        if self.principals_file is not None:
            try:
                load(self.principals_file)
            except (OSError, ValueError, KeyError, TypeError) as exc:
                raise ValueError(
                    f"{_PREFIX}PRINCIPALS_FILE: cannot read the principals in it: {exc}"
                ) from None
        return self

    def node_id(self) -> str:
        return self.node or "hive-" + re.sub(r"[^A-Za-z0-9_-]", "-", self.raft_self)

    def raft(self) -> RaftConfig:
        return RaftConfig(
            self_addr=self.raft_self,
            peers=tuple(p for p in self.raft_peers if p and p != self.raft_self),
            password=self.raft_password,
            data_dir=self.data_dir,
            bind_addr=self.raft_bind or self.raft_self,
        )

    def principals(self) -> Roster | None:
        """The principals (read again when the file changes), or None when commands need no
        signature."""
        if self.principals_file is None:
            return None
        return Roster(self.principals_file)

    def seal_key(self) -> SealKey:
        """The key the Hive seals its outcomes with: every replica derives the same one from the
        cluster's shared secret (`swarm.kernel.seal`)."""
        return SealKey.from_secret(self.raft_password)

    def id_key(self, purpose: str) -> IdKey:
        """Keys for the ids the Hive derives (reconcile commands, message ids), the same on
        every replica so that a new leader repeating a command is deduplicated."""
        return IdKey.from_secret(self.raft_password, f"hive {purpose}")
