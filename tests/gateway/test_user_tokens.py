"""Users' API tokens against a real nats-server and a Hive that checks signatures and roles: a
user's token acts as that user, signed with its key, held to its roles by the Hive, and reads
only the namespaces where it holds one; the owner's token still reaches everything; a token
replaced, revoked, forged, of a removed user, or sent with header tricks is a 401."""

from __future__ import annotations

import json
import secrets
import stat
import string
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from schemas import names
from swarm.client.swarm import Swarm
from swarm.devstack.apitokens import TOKENS, digest, issue_token, revoke_token
from swarm.devstack.principals import LISTING, add_user, issue, remove_user, rotate_user
from swarm.gateway import GatewaySettings, create_app
from swarm.kernel.eventlog import EventLog
from swarm.kernel.settings import Settings
from swarm.kernel.signing import signature_of
from tests.gateway.client import SPEC, TOKEN, problem
from tests.helpers.stack import Stack, running_stack

pytestmark = pytest.mark.timeout(120)


@dataclass
class Signed:
    """A stack whose Hive takes only its principals' signed commands, and the API over it."""

    stack: Stack
    keys: Path
    app: Any

    def client(self, token: str | None) -> httpx.AsyncClient:
        headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
        transport = httpx.ASGITransport(app=self.app, raise_app_exceptions=False)
        return httpx.AsyncClient(
            transport=transport, base_url="http://swarm.test", headers=headers, timeout=30
        )

    def public_key(self, user: str) -> str:
        listed = json.loads((self.keys / LISTING).read_text())
        return next(str(p["public_key"]) for p in listed if p["name"] == user)

    async def command_of(self, result: dict[str, Any]) -> tuple[str, str]:
        """(identity, signer's public key) of the command an accepted or rejected answer is
        about, as the log holds it."""
        seq = result["outcome"]["data"]["command_seq"] if "outcome" in result else None
        assert isinstance(seq, int), result
        stored = await self.stack.client.message(names.STREAM_COMMANDS, seq)
        signature = signature_of(stored.data)
        assert signature is not None
        assert signature.valid
        return json.loads(stored.data)["identity"], signature.signer


@pytest.fixture(scope="module")
async def signed(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Signed]:
    """Namespaces `ops` and `lab`; ann is operator in ops, bea viewer in ops, cy holds no
    role, and vic is viewer in every namespace."""
    root = tmp_path_factory.mktemp("tokens")
    keys = root / "principals"
    issue(keys, [("admin", "admin"), ("gateway", "gateway")])
    for user in ("ann", "bea", "cy", "vic"):
        add_user(keys, user)
    async with running_stack(root, principals_file=keys / LISTING) as stack:
        assert stack.owner is not None
        owner = Swarm(stack.owner, identity="user:o")
        for namespace in ("ops", "lab"):
            assert (await owner.namespaces.create(namespace)).accepted
        for user, role, namespace in (
            ("ann", "operator", "ops"),
            ("bea", "viewer", "ops"),
            ("vic", "viewer", None),
        ):
            assert (await owner.access.grant(user, role, namespace=namespace)).accepted
        # The API connects and signs with its own key (a `gateway` principal), as `swarm up`
        # runs it: the Hive answers its queries under that key's inbox prefix alone.
        async with await EventLog.connect(
            stack.url, name="gateway", credentials=keys / "gateway.nk", ensure=False
        ) as log:
            app = create_app(
                Settings(nats_url=stack.url),
                GatewaySettings(principals_file=keys / LISTING),
                log=log,
                token=TOKEN,
            )
            yield Signed(stack, keys, app)


async def test_an_operator_token_deploys_in_its_namespace_signed_as_its_user(
    signed: Signed,
) -> None:
    token = issue_token(signed.keys, "ann")
    async with signed.client(token) as ann:
        deployed = await ann.post("/v1/namespaces/ops/agents", json={"name": "a1", "spec": SPEC})
        assert deployed.status_code == 200, deployed.text
        # The command is ann's: her identity, her key's signature (the Hive checked both).
        assert await signed.command_of(deployed.json()) == ("user:ann", signed.public_key("ann"))

        refused = await ann.post("/v1/namespaces/lab/agents", json={"name": "a1", "spec": SPEC})
        body = problem(refused, 403)
        assert body["rule"] == "access"
        assert body["type"].endswith("/rejected")
        assert "user ann may not send swarm.cmd.agent.deploy" in body["detail"]
        assert "needs role operator in namespace lab and holds no role there" in body["detail"]

        # Her own command's outcome is hers to read; reaching past ops is not.
        polled = await ann.get(deployed.headers["location"])
        assert polled.status_code == 200, polled.text
        assert polled.json()["status"] == "accepted"
        problem(await ann.post("/v1/namespaces", json={"name": "annex"}), 403)


async def test_a_viewer_token_reads_its_namespace_alone_and_cannot_deploy(signed: Signed) -> None:
    async with signed.client(TOKEN) as owner:
        for namespace in ("ops", "lab"):
            made = await owner.post(
                f"/v1/namespaces/{namespace}/agents", json={"name": "seen", "spec": SPEC}
            )
            assert made.status_code == 200, made.text
        in_lab = made.headers["location"]
    async with signed.client(issue_token(signed.keys, "bea")) as bea:
        listed = await bea.get("/v1/agents")
        assert listed.status_code == 200, listed.text
        assert {a["namespace"] for a in listed.json()["agents"]} == {"ops"}
        spaces = (await bea.get("/v1/namespaces")).json()["namespaces"]
        assert [n["name"] for n in spaces] == ["ops"]
        assert (await bea.get("/v1/namespaces/ops/agents/seen")).status_code == 200

        # Another namespace is refused, not hidden: whether or not what is named exists.
        for path in (
            "/v1/agents?namespace=lab",
            "/v1/namespaces/lab/agents/seen",
            "/v1/namespaces/lab/agents/nothing-here",
            "/v1/namespaces/lab/agents/seen/logs",
        ):
            body = problem(await bea.get(path), 403)
            assert body["rule"] == "access"
            assert "user bea may not read namespace lab" in body["detail"], path
            assert "swarm user grant bea viewer --namespace lab" in body["detail"]
        # What spans every namespace takes a role in every one.
        for path in ("/v1/pods", "/v1/events", "/v1/timeline/state", "/v1/webhooks"):
            body = problem(await bea.get(path), 403)
            assert "needs role viewer in every namespace" in body["detail"], path
        problem(await bea.get(in_lab), 403)  # the owner's command, in lab
        assert (await bea.get("/v1/schemas")).status_code == 200

        deploy = await bea.post("/v1/namespaces/ops/agents", json={"name": "b1", "spec": SPEC})
        body = problem(deploy, 403)
        assert body["rule"] == "access"
        assert "needs role operator in namespace ops and holds viewer there" in body["detail"]
        problem(await bea.post("/v1/tasks/work", content=b"{}"), 403)


async def test_roles_in_every_namespace_and_none_at_all(signed: Signed) -> None:
    async with signed.client(issue_token(signed.keys, "vic")) as vic:
        assert (await vic.get("/v1/pods")).status_code == 200
        assert (await vic.get("/v1/events", params={"limit": 1})).status_code == 200
        spaces = {n["name"] for n in (await vic.get("/v1/namespaces")).json()["namespaces"]}
        assert {"ops", "lab"} <= spaces
        problem(await vic.post("/v1/namespaces", json={"name": "vics"}), 403)
    async with signed.client(issue_token(signed.keys, "cy")) as cy:
        assert (await cy.get("/v1/agents")).json()["agents"] == []
        assert (await cy.get("/v1/namespaces")).json()["namespaces"] == []
        # A command sent whole is still cy's: it may not claim another identity...
        claimed = await cy.post(
            "/v1/commands",
            json={
                "type": "swarm.cmd.namespace.create",
                "data": {"name": "x"},
                "identity": "user:o",
            },
        )
        assert "identity is the token's (user:cy)" in problem(claimed, 422)["detail"]
        # ...and as itself, the Hive refuses it for want of a role.
        sent = await cy.post(
            "/v1/commands", json={"type": "swarm.cmd.namespace.create", "data": {"name": "x"}}
        )
        assert problem(sent, 403)["rule"] == "access"


async def test_the_owner_token_still_reaches_everything(signed: Signed) -> None:
    async with signed.client(TOKEN) as owner:
        assert (await owner.get("/v1/pods")).status_code == 200
        created = await owner.post("/v1/namespaces", json={"name": "owned"})
        assert created.status_code == 200, created.text
        identity, signer = await signed.command_of(created.json())
        assert (identity, signer) == ("user:api", signed.public_key("gateway"))
        assert (await owner.get("/openapi.json")).status_code == 200


async def test_a_replaced_revoked_or_removed_users_token_is_refused(signed: Signed) -> None:
    add_user(signed.keys, "dee")
    first = issue_token(signed.keys, "dee")
    async with signed.client(first) as dee:
        assert (await dee.get("/v1/agents")).status_code == 200
    second = issue_token(signed.keys, "dee")
    async with signed.client(first) as old:
        body = problem(await old.get("/v1/agents"), 401)
        assert "not a token of this API" in body["detail"]
    async with signed.client(second) as dee:
        assert (await dee.get("/v1/agents")).status_code == 200
        # A rotated key signs from the next request on (the Hive reads the listing again).
        rotate_user(signed.keys, "dee")
        sent = await dee.post("/v1/namespaces", json={"name": "dees"})
        assert problem(sent, 403)["rule"] == "access"  # not `signature`: the new key signed
        assert revoke_token(signed.keys, "dee")
        refused = await dee.get("/v1/agents")
        problem(refused, 401)
        assert refused.headers["www-authenticate"].startswith("Bearer")
    third = issue_token(signed.keys, "dee")
    remove_user(signed.keys, "dee")  # the token stays in the file: the listing decides
    async with signed.client(third) as gone:
        problem(await gone.get("/v1/agents"), 401)
        problem(await gone.get("/openapi.json"), 401)


async def test_the_token_file_is_private_and_holds_no_token(signed: Signed) -> None:
    token = issue_token(signed.keys, "ann")
    path = signed.keys / TOKENS
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    text = path.read_text()
    assert token not in text
    assert token[len("swarm_") :][:12] not in text
    entry = next(e for e in json.loads(text) if e["user"] == "ann")
    assert entry["sha256"] == digest(token)
    assert entry["hint"] == f"swarm_…{token[-4:]}"


async def test_forged_tokens_and_header_tricks_are_refused(signed: Signed) -> None:
    token = issue_token(signed.keys, "ann")
    alphabet = string.ascii_letters + string.digits
    forged = "swarm_" + "".join(secrets.choice(alphabet) for _ in range(43))
    flipped = token[:-1] + ("A" if token[-1] != "A" else "B")
    stored = digest(token)  # what someone who read the file has: not the token
    for wrong in (forged, flipped, stored, "swarm_", token + "x", TOKEN + "x", token.upper()):
        async with signed.client(wrong) as client:
            problem(await client.get("/v1/agents"), 401)

    async with signed.client(None) as anonymous:
        tricks: list[dict[str, str]] = [
            {"Authorization": f"Basic {token}"},
            {"Authorization": token},
            {"Authorization": "Bearer"},
            {"X-Api-Token": token},
            {"X-Forwarded-User": "admin", "X-Swarm-Identity": "user:admin"},
        ]
        for headers in tricks:
            problem(await anonymous.get("/v1/agents", headers=headers), 401)
        problem(await anonymous.get("/v1/agents", params={"access_token": token}), 401)
        # The scheme is case-insensitive and may be followed by more than one space (RFC 9110
        # `1*SP`); the token is neither.
        for taken in (f"bearer {token}", f"Bearer  {token}"):
            answer = await anonymous.get("/v1/agents", headers={"Authorization": taken})
            assert answer.status_code == 200, answer.text
        # Two Authorization headers (a user's and the owner's): which counts is not guessed.
        both = httpx.Headers(
            [("Authorization", f"Bearer {token}"), ("Authorization", f"Bearer {TOKEN}")]
        )
        body = problem(await anonymous.get("/v1/pods", headers=both), 401)
        assert "one Authorization header" in body["detail"]
