"""The keys a front end signs and checks with: `CommandSigner` (the API signs a user's commands
with the user's key), `MeshClaim` and `mesh_signature_of` (a message to an agent, signed as sent
by someone, and whether its answer is signed by a pod), `SealKey` (the Hive's key, derived from
the cluster's secret: `swarm up` hands its public half to every service).

The kernel's (`swarm.kernel.signing`, `swarm.kernel.seal`), named here so that the CLI and the
HTTP API import the client alone.
"""

from __future__ import annotations

from swarm.kernel.seal import SealKey
from swarm.kernel.signing import CommandSigner, MeshClaim, mesh_signature_of

__all__ = ["CommandSigner", "MeshClaim", "SealKey", "mesh_signature_of"]
