"""A small network of Linux network namespaces, so one Hive replica's Raft traffic can be cut.

Layout (every name unique to one run, every address private and inside namespaces this module
creates, except one end of one veth pair in the caller's namespace that NATS listens on)::

    caller's namespace               <run>-sw (a switch)                <run>-r<i> (one per replica)
    veth <run>h  10.A.B.254 ──── hn ─┤ bridge brn ├─ n<i> ──── n0  10.A.B.<i+1>    (NATS)
                                      │ bridge brr ├─ r<i> ──── r0  10.A.B+1.<i+1>  (Raft)

NATS traffic and Raft traffic run over separate links, so `cut(i)` (the switch's port of replica
i's Raft link goes down, like a pulled cable) isolates the replica from its peers while it still
reaches NATS: a cut-off leader can still write to the log, which is what the fence must stop.

`destroy()` removes everything, also after a failure half-way through `create()`, and runs are
told apart by the creating pid so that a later run sweeps what a SIGKILLed one left behind.
Needs root (CAP_NET_ADMIN) and iproute2's `ip`; `unavailable()` says why not otherwise.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import random
import re
import shutil
import subprocess
from dataclasses import dataclass, field

import psutil

_PREFIX = "swf"
_CAP_NET_ADMIN = 12
_OURS = re.compile(rf"^{_PREFIX}-(\d+)-[0-9a-f]+-")


class NetnsError(RuntimeError):
    """An `ip` command failed; the message carries its output."""


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=15, check=False)
    if check and result.returncode != 0:
        raise NetnsError(f"ip {' '.join(args)}: {result.stderr.strip() or result.returncode}")
    return result


def unavailable() -> str | None:
    """Why this machine cannot build the network (a reason to skip with), or None."""
    if shutil.which("ip") is None:
        return "no `ip` command (iproute2) on this machine"
    try:
        with open("/proc/self/status") as status:
            caps = next(line for line in status if line.startswith("CapEff:"))
        if not int(caps.split()[1], 16) & (1 << _CAP_NET_ADMIN):
            return "network namespaces need CAP_NET_ADMIN (run as root)"
    except (OSError, StopIteration, ValueError):
        return "cannot read this process's capabilities"
    probe = f"{_PREFIX}-{os.getpid()}-0-probe"
    made = _ip("netns", "add", probe, check=False)
    if made.returncode != 0:
        return f"`ip netns add` fails here: {made.stderr.strip()}"
    _ip("netns", "del", probe, check=False)
    return None


def sweep_stale() -> None:
    """Delete namespaces of earlier runs whose process is gone (a SIGKILLed test run)."""
    listing = _ip("netns", "list", check=False).stdout
    for line in listing.splitlines():
        name = line.split()[0] if line.split() else ""
        match = _OURS.match(name)
        if match and not psutil.pid_exists(int(match.group(1))):
            _ip("netns", "del", name, check=False)


def _free_subnet() -> str:
    """`10.A.B` such that neither 10.A.B.0/24 nor 10.A.B+1.0/24 meets a route of this host."""
    routes = _ip("-4", "route", "show", "table", "all", check=False).stdout
    taken = []
    for token in re.findall(r"\b(\d+\.\d+\.\d+\.\d+(?:/\d+)?)\b", routes):
        with contextlib.suppress(ValueError):
            taken.append(ipaddress.ip_network(token, strict=False))
    rng = random.Random()
    for _ in range(200):
        a, b = rng.randrange(64, 250), rng.randrange(0, 254, 2)
        nets = [ipaddress.ip_network(f"10.{a}.{b + i}.0/24") for i in (0, 1)]
        if not any(n.overlaps(t) for n in nets for t in taken):
            return f"10.{a}.{b}"
    raise NetnsError("no free private subnet for the test network")


@dataclass
class Network:
    """`size` namespaces on two bridges; see the module docstring."""

    size: int
    run: str = field(default_factory=lambda: f"{os.getpid()}-{random.getrandbits(24):06x}")
    subnet: str = field(default_factory=_free_subnet)
    created: list[str] = field(default_factory=list)

    @property
    def switch(self) -> str:
        return f"{_PREFIX}-{self.run}-sw"

    def namespace(self, i: int) -> str:
        return f"{_PREFIX}-{self.run}-r{i}"

    @property
    def host_link(self) -> str:
        # Interface names have at most 15 characters.
        return f"{_PREFIX}{self.run.split('-')[1]}h"

    @property
    def nats_host(self) -> str:
        """The address NATS listens on, in the caller's namespace."""
        return f"{self.subnet}.254"

    def raft_host(self, i: int) -> str:
        a, b, c = self.subnet.split(".")
        return f"{a}.{b}.{int(c) + 1}.{i + 1}"

    def prefix(self, i: int) -> tuple[str, ...]:
        """Runs a command in replica i's namespace."""
        return ("ip", "netns", "exec", self.namespace(i))

    def create(self) -> None:
        sweep_stale()
        try:
            self._create()
        except BaseException:
            self.destroy()
            raise

    def _create(self) -> None:
        sw = self.switch
        self._add_namespace(sw)
        for bridge in ("brn", "brr"):
            _ip("-n", sw, "link", "add", bridge, "type", "bridge")
            _ip("-n", sw, "link", "set", bridge, "up")
        _ip("link", "add", self.host_link, "type", "veth", "peer", "name", "hn", "netns", sw)
        self.created.append(f"link:{self.host_link}")
        _ip("-n", sw, "link", "set", "hn", "master", "brn", "up")
        _ip("addr", "add", f"{self.nats_host}/24", "dev", self.host_link)
        _ip("link", "set", self.host_link, "up")
        raft_subnet = self.raft_host(0).rsplit(".", 1)[0]
        for i in range(self.size):
            ns = self.namespace(i)
            self._add_namespace(ns)
            _ip("-n", ns, "link", "set", "lo", "up")
            for inner, port, bridge, address in (
                ("n0", f"n{i}", "brn", f"{self.subnet}.{i + 1}"),
                ("r0", f"r{i}", "brr", f"{raft_subnet}.{i + 1}"),
            ):
                veth = ("type", "veth", "peer", "name", port, "netns", sw)
                _ip("-n", ns, "link", "add", inner, *veth)
                _ip("-n", sw, "link", "set", port, "master", bridge, "up")
                _ip("-n", ns, "addr", "add", f"{address}/24", "dev", inner)
                _ip("-n", ns, "link", "set", inner, "up")

    def _add_namespace(self, name: str) -> None:
        _ip("netns", "add", name)
        self.created.append(f"netns:{name}")

    def cut(self, i: int) -> None:
        """Replica i loses its Raft link (it keeps reaching NATS)."""
        _ip("-n", self.switch, "link", "set", f"r{i}", "down")

    def heal(self, i: int) -> None:
        _ip("-n", self.switch, "link", "set", f"r{i}", "up")

    def destroy(self) -> None:
        """Remove what `create()` made; safe to call twice and after a partial create."""
        for item in reversed(self.created):
            kind, name = item.split(":", 1)
            if kind == "netns":
                _ip("netns", "del", name, check=False)
            else:
                _ip("link", "del", name, check=False)
        self.created.clear()


__all__ = ["NetnsError", "Network", "sweep_stale", "unavailable"]
