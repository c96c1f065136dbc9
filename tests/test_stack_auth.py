"""A `swarm up` stack's NATS admits its principals alone, each with its role's permissions
(`swarm.devstack.principals`): tried as an attacker on this machine would, with a plain nats-py
client."""

from __future__ import annotations

import asyncio
import datetime
import json
import os
import re
import ssl
import stat
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nats
import nats.errors
import nats.js.errors
import pytest

from schemas import names
from swarm.devstack import principals, tls
from swarm.devstack.principals import (
    FAMILIES,
    SCHEDULER,
    Principal,
    add_user,
    authorization,
    denied,
    issue,
    permissions,
    role_of,
    rotate_user,
    users,
)
from swarm.kernel import env
from swarm.kernel.connection import CannotConnect, connect_nats, public_key, settle
from tests.helpers.cli_process import run_cli
from tests.helpers.violations import Errors
from tests.helpers.waiting import true, wait_until

pytestmark = pytest.mark.timeout(300)

#: Stand-ins that only idle: each gets the credentials of the role its name gives it.
SERVICES = ("pod-7=sleep 600", "webhooks=sleep 600", "hive=sleep 600")


#: A stand-in that connects with its key and says which (a service's `swarm key rotate` test).
CONNECTED = """
import asyncio, os
from pathlib import Path
from swarm.kernel.connection import connect_nats
from swarm.kernel.signing import CommandSigner
from swarm.kernel.connection import settle

async def main():
    seed = Path(os.environ["SWARM_NATS_CREDENTIALS"])
    ca = Path(os.environ["SWARM_NATS_CA"])
    url = os.environ["SWARM_NATS_URL"]
    nc = await connect_nats(url, name="stand-in", timeout=10, credentials=seed, ca=ca)
    print("connected as", CommandSigner.from_seed_file(seed).public_key, flush=True)
    await asyncio.Event().wait()

asyncio.run(main())
"""


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """One stack without Swarm's services (the principals are what is tried here), and its
    `swarm status -o json`."""
    root = tmp_path_factory.mktemp("auth")
    data_dir = root / "data"
    env = {k: v for k, v in os.environ.items() if not k.startswith("SWARM_")}

    def swarm(*args: str) -> Any:
        return run_cli(args, cwd=root, env=env, timeout=120, module="swarm.cli.stack")

    flags = [f for service in SERVICES for f in ("--service", service)]
    standin = root / "connected.py"
    standin.write_text(CONNECTED)
    flags += ["--service", f"observer={sys.executable} {standin}"]
    up = swarm("up", "-d", "--no-services", "--data-dir", str(data_dir), *flags)
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        report = json.loads(swarm("status", "--data-dir", str(data_dir), "-o", "json").stdout)

        def user(*args: str) -> Any:
            return run_cli(
                ["user", *args, "--data-dir", str(data_dir)], cwd=root, env=env, timeout=60
            )

        def key(*args: str) -> Any:
            return run_cli(
                ["key", *args, "--data-dir", str(data_dir)], cwd=root, env=env, timeout=120
            )

        yield report | {
            "principals": data_dir / "principals",
            "user": user,
            "key": key,
            "logs": data_dir / "logs",
        }
    finally:
        swarm("down", "--data-dir", str(data_dir))


async def connect_as(
    stack: dict[str, Any], principal: str, inbox: str | None = None
) -> tuple[nats.NATS, Errors]:
    """A plain nats-py client with `principal`'s key, taking replies under its own inbox prefix
    (the only one it may read) unless told another."""
    errors = Errors()
    seed = stack["principals"] / f"{principal}.nk"
    nc = await nats.connect(
        stack["nats_url"],
        nkeys_seed=str(seed),
        error_cb=errors.hear,
        inbox_prefix=inbox or names.inbox_prefix(public_key(seed)),
        tls=ssl.create_default_context(cafile=stack["nats_ca"]),
    )
    return nc, errors


async def test_nobody_connects_without_credentials_or_with_a_key_of_its_own(
    stack: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(env.NATS_CREDENTIALS, raising=False)
    monkeypatch.setenv(env.NATS_CA, stack["nats_ca"])
    with pytest.raises(CannotConnect) as refused:
        await connect_nats(stack["nats_url"], name="anonymous", timeout=5)
    # What a user sees: which file to connect with.
    assert "authorization violation" in str(refused.value)
    assert "nats_credentials" in str(refused.value)
    # A well-formed key pair the stack did not issue.
    (stranger,) = issue(tmp_path, [("stranger", "admin")])
    with pytest.raises(CannotConnect, match="authorization violation"):
        await connect_nats(
            stack["nats_url"], name="stranger", timeout=5, credentials=stranger.seed_file
        )
    owner = await connect_nats(
        stack["nats_url"], name="owner", timeout=5, credentials=Path(stack["nats_credentials"])
    )
    await owner.close()


async def test_the_server_speaks_tls_alone_with_a_certificate_of_the_stacks_own_ca(
    stack: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What a client that does not trust the stack's CA sees: a refusal that says which CA to
    trust; the owner's key does not help it."""
    monkeypatch.delenv(env.NATS_CA, raising=False)
    owner = Path(stack["nats_credentials"])
    with pytest.raises(CannotConnect) as untrusted:
        await connect_nats(stack["nats_url"], name="no-ca", timeout=5, credentials=owner)
    message = str(untrusted.value)
    assert "certificate" in message
    assert "nats_ca" in message
    assert env.NATS_CA in message
    # Another stack's CA is no better.
    other = tls.issue(tmp_path / "other")
    with pytest.raises(CannotConnect, match="not one this client trusts"):
        await connect_nats(
            stack["nats_url"], name="other-ca", timeout=5, credentials=owner, ca=other.ca_cert
        )
    # Plain text is not spoken at all: the server asks every client for TLS first.
    host, port = stack["nats_url"].removeprefix("nats://").rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        info = await asyncio.wait_for(reader.readline(), 10)
    finally:
        writer.close()
    assert info.startswith(b"INFO ")
    assert json.loads(info[5:])["tls_required"] is True
    # With the stack's CA, by name (127.0.0.1 and localhost are both in the certificate).
    for url in (stack["nats_url"], stack["nats_url"].replace("127.0.0.1", "localhost")):
        nc = await connect_nats(
            url, name="owner", timeout=5, credentials=owner, ca=Path(stack["nats_ca"])
        )
        await nc.close()
    # The CA's key signs certificates its clients trust: the owner's alone, like the seeds.
    ca = Path(stack["nats_ca"])
    assert ca.parent == Path(stack["data_dir"]) / "tls"
    for path in [ca.parent, *ca.parent.iterdir()]:
        assert stat.S_IMODE(path.stat().st_mode) & 0o077 == 0, path


def test_the_owners_credentials_are_named_and_only_the_owner_reads_the_seeds(
    stack: dict[str, Any],
) -> None:
    assert stack["nats_credentials_kind"] == "nkey-seed"
    owner = Path(stack["nats_credentials"])
    assert owner == stack["principals"] / "admin.nk"
    assert owner.read_text().startswith("SU")  # a user's nkey seed
    for path in [stack["principals"], *stack["principals"].iterdir()]:
        assert stat.S_IMODE(path.stat().st_mode) & 0o077 == 0, path


async def test_a_pod_cannot_write_an_event_remove_the_log_or_read_webhook_secrets(
    stack: dict[str, Any],
) -> None:
    nc, errors = await connect_as(stack, "pod-7")
    js = nc.jetstream(timeout=2)
    try:
        # A forged event: the server drops it and says why.
        subject = names.event_subject("agent", "forged", "deployed")
        with pytest.raises(nats.errors.TimeoutError):
            await js.publish(subject, b"{}")
        assert "publish" in await errors.violation(subject)
        # Removing the log, a message of it, or the secrets' bucket.
        with pytest.raises(nats.errors.TimeoutError):
            await js.delete_stream(names.STREAM_EVENTS)
        await errors.violation(f"$JS.API.STREAM.DELETE.{names.STREAM_EVENTS}")
        with pytest.raises(nats.errors.TimeoutError):
            await js.purge_stream(names.STREAM_COMMANDS)
        await errors.violation(f"$JS.API.STREAM.PURGE.{names.STREAM_COMMANDS}")
        # Reading a webhook's signing secret, by a direct get of its key.
        secrets = f"KV_{names.WEBHOOK_SECRETS_BUCKET}"
        direct = f"$JS.API.DIRECT.GET.{secrets}.$KV.{names.WEBHOOK_SECRETS_BUCKET}.w1"
        with pytest.raises(nats.errors.TimeoutError):
            await nc.request(direct, b"", timeout=2)
        await errors.violation(direct)
        # Commands and its own subjects are its to publish (the Hive judges the commands).
        ack = await js.publish(names.COMMANDS_ALL.replace(">", "pod.report"), b"{}")
        assert ack.stream == names.STREAM_COMMANDS
    finally:
        await nc.close()
    # Nothing of it happened: the owner still sees the streams.
    owner, _ = await connect_as(stack, "admin")
    try:
        info = await owner.jetstream().stream_info(names.STREAM_EVENTS)
        assert info.config.name == names.STREAM_EVENTS
    finally:
        await owner.close()


async def test_only_a_pod_listens_on_the_mesh(stack: dict[str, Any]) -> None:
    """Joining an agent's queue group (to answer for it) or listening to what is sent to it
    is a pod's alone; anyone may ask."""
    subject = "swarm.mesh.agent.default.echo"
    webhooks, errors = await connect_as(stack, "webhooks")
    try:
        await webhooks.subscribe(subject, queue="mesh")
        await settle(webhooks, 10)
        assert "subscription" in await errors.violation(subject)
    finally:
        await webhooks.close()
    pod, errors = await connect_as(stack, "pod-7")
    try:
        sub = await pod.subscribe(subject, queue="mesh")
        asker, _ = await connect_as(stack, "webhooks")
        try:
            await asker.publish(subject, b"ping")
            message = await sub.next_msg(timeout=10)
            assert message.data == b"ping"
        finally:
            await asker.close()
        assert errors.seen == []
    finally:
        await pod.close()


async def test_a_pod_reports_and_answers_probes_under_its_own_id_alone(
    stack: dict[str, Any],
) -> None:
    """A pod cannot keep another pod alive (its heartbeats, its probe's answer) or speak for it
    (metrics, logs): its principal's name is its pod id, and its subjects are bound to it."""
    hive, hive_errors = await connect_as(stack, "hive")
    pod, errors = await connect_as(stack, "pod-7")
    try:
        beats: asyncio.Queue[str] = asyncio.Queue()

        async def on_beat(msg: Any) -> None:
            beats.put_nowait(msg.subject)

        await hive.subscribe(f"{names.HEARTBEAT_PREFIX}.*", cb=on_beat)
        await settle(hive, 10)
        other = "pod-3"
        forged = [
            names.heartbeat_subject(other),
            names.metrics_subject(other, names.METRIC_AGENT),
            names.logs_subject(other, "info"),
        ]
        for subject in forged:
            await pod.publish(subject, b"{}")
        await pod.publish(names.heartbeat_subject("pod-7"), b"")
        # One publisher's messages arrive in order: its own beat came, the forged one never did.
        assert await asyncio.wait_for(beats.get(), 30) == names.heartbeat_subject("pod-7")
        for subject in forged:
            assert "publish" in (await errors.violation(subject)).lower()
        # Listening for another pod's liveness probe (to answer for it) is refused; its own
        # probe reaches it, and its answer reaches the Hive.
        await pod.subscribe(names.probe_subject(other))
        violation = await errors.violation(names.probe_subject(other))
        assert "subscription" in violation.lower()

        async def answer(msg: Any) -> None:
            await msg.respond(b"here")

        await pod.subscribe(names.probe_subject("pod-7"), cb=answer)
        await settle(pod, 10)
        reply = await hive.request(names.probe_subject("pod-7"), b"", timeout=30)
        assert reply.data == b"here"
        assert hive_errors.seen == []
    finally:
        await pod.close()
        await hive.close()
    # Nor does another role beat for a pod, or listen for its probe.
    webhooks, errors = await connect_as(stack, "webhooks")
    try:
        await webhooks.publish(names.heartbeat_subject("pod-7"), b"")
        assert "publish" in (await errors.violation(names.heartbeat_subject("pod-7"))).lower()
        await webhooks.subscribe(names.probe_subject("pod-7"))
        await errors.violation(names.probe_subject("pod-7"))
    finally:
        await webhooks.close()


async def test_nobody_reads_another_principals_replies(stack: dict[str, Any]) -> None:
    """Replies (to queries, JetStream requests, bucket reads) arrive under each principal's own
    inbox prefix, and only there may it listen."""
    owner = names.inbox_prefix(public_key(Path(stack["nats_credentials"])))
    for spy_name in ("webhooks", "pod-7", "hive"):
        spy, errors = await connect_as(stack, spy_name)
        try:
            for subject in (f"{owner}.>", f"{names.INBOX_ROOT}.>", f"{names.INBOX_ROOT}.*.*"):
                await spy.subscribe(subject)
                assert "subscription" in (await errors.violation(subject)).lower()
        finally:
            await spy.close()
    # Nor does nats-py's default prefix get a principal anything: its replies are refused.
    plain, errors = await connect_as(stack, "webhooks", inbox=names.INBOX_ROOT)
    try:
        with pytest.raises(nats.errors.TimeoutError):
            await plain.jetstream(timeout=2).stream_info(names.STREAM_EVENTS)
        await errors.violation(f"{names.INBOX_ROOT}.")
    finally:
        await plain.close()
    # Under its own prefix the same request is answered (as every test here connects).
    webhooks, errors = await connect_as(stack, "webhooks")
    try:
        info = await webhooks.jetstream(timeout=10).stream_info(names.STREAM_EVENTS)
        assert info.config.name == names.STREAM_EVENTS
        assert errors.seen == []
    finally:
        await webhooks.close()


async def test_the_hive_writes_events_and_the_webhook_dispatcher_reads_secrets(
    stack: dict[str, Any],
) -> None:
    hive, errors = await connect_as(stack, "hive")
    try:
        js = hive.jetstream(timeout=10)
        ack = await js.publish(names.event_subject("agent", "a1", "running"), b"{}")
        assert ack.stream == names.STREAM_EVENTS
        # Removing the log is the owner's alone, even for the Hive.
        with pytest.raises(nats.errors.TimeoutError):
            await hive.jetstream(timeout=2).delete_stream(names.STREAM_EVENTS)
        await errors.violation(f"$JS.API.STREAM.DELETE.{names.STREAM_EVENTS}")
    finally:
        await hive.close()
    webhooks, errors = await connect_as(stack, "webhooks")
    try:
        kv = await webhooks.jetstream(timeout=10).create_key_value(
            bucket=names.WEBHOOK_SECRETS_BUCKET
        )
        await kv.put("w1", b"secret")
        assert (await kv.get("w1")).value == b"secret"
        assert errors.seen == []
    finally:
        await webhooks.close()


def test_every_role_but_the_owner_is_denied_removal_and_only_the_hive_writes_events() -> None:
    """The rules as the server gets them, for the roles no test above connects as."""
    for service, role in [("scheduler", "service"), ("gateway", "gateway"), ("hive-2", "hive")]:
        assert role_of(service) == role
    assert denied("admin") == ([], [])
    for role in ("hive", "gateway", "webhooks", "service", "pod"):
        publish, subscribe = denied(role)
        assert "$JS.API.STREAM.DELETE.>" in publish
        assert (names.EVENTS_ALL in publish) is (role != "hive")
        # Inboxes are answered in (`allow_responses`), not published into (tests/test_perimeter.py).
        assert f"{names.INBOX_ROOT}.>" in publish
        assert (f"{names.QUERY_PREFIX}.>" in subscribe) is (role != "hive")
    with pytest.raises(ValueError, match="unknown role"):
        denied("root")
    # The scheduler's exceptions (the market, inboxes) are its principal's, not its name's.
    for role, special in (("service", True), ("user", False)):
        scheduler = permissions(Principal(SCHEDULER, role, Path("scheduler.nk"), "UKEY"))
        assert (f"{names.QUERY_MARKET_PREFIX}.>" in scheduler.subscribe_allow) is special
        assert (f"{names.INBOX_ROOT}.>" in scheduler.publish_deny) is not special
        assert not scheduler.allow_responses


def test_the_families_pods_are_allowed_name_every_subject_swarm_has() -> None:
    """A pod's permissions allow Swarm's subject families one by one: a family missing from
    the list would refuse pods its subjects."""
    subjects = [
        value
        for value in vars(names).values()
        if isinstance(value, str) and value.startswith(f"{names.ROOT}.")
    ]
    assert len(subjects) > 20
    assert {subject.split(".")[1] for subject in subjects} <= set(FAMILIES)


def test_the_server_configuration_names_each_principal_once(tmp_path: Path) -> None:
    principals = issue(tmp_path, [("admin", "admin"), ("pod-0", "pod")])
    again = issue(tmp_path, [("admin", "admin"), ("pod-0", "pod")])
    assert [p.public_key for p in again] == [p.public_key for p in principals]  # kept
    block = authorization(principals)
    assert block.count('"nkey"') == 2
    for p in principals:
        assert p.public_key in block
        assert p.public_key.startswith("U")


async def can_connect(stack: dict[str, Any], seed: Path) -> bool:
    """Whether the server admits `seed`'s key (refused: for its authorization, nothing else)."""
    try:
        nc = await connect_nats(
            stack["nats_url"], name="user", timeout=5, credentials=seed, ca=Path(stack["nats_ca"])
        )
    except CannotConnect as exc:
        refused = "authorization violation" in str(exc)
        if not refused:
            raise
        return False
    await nc.close()
    return True


async def test_a_user_added_connects_at_once_a_rotated_key_and_a_removed_user_do_not(
    stack: dict[str, Any], tmp_path: Path
) -> None:
    added = stack["user"]("add", "ann")
    assert added.returncode == 0, added.stdout + added.stderr
    seed = stack["principals"] / "ann.nk"
    assert f"SWARM_NATS_CREDENTIALS={seed}" in added.stdout
    assert "SWARM_IDENTITY=user:ann" in added.stdout
    assert f"SWARM_NATS_CA={stack['nats_ca']}" in added.stdout
    # The running server reads who it admits again (SIGHUP): no restart needed.
    assert await can_connect(stack, seed)
    assert "ann" in stack["user"]("ls").stdout
    again = stack["user"]("add", "ann")
    assert again.returncode == 2
    assert "exists already" in again.stderr

    old = tmp_path / "old.nk"
    old.write_bytes(seed.read_bytes())
    rotated = stack["user"]("rotate", "ann")
    assert rotated.returncode == 0, rotated.stdout + rotated.stderr
    assert seed.read_bytes() != old.read_bytes()
    assert await can_connect(stack, seed)
    assert not await can_connect(stack, old)

    removed = stack["user"]("rm", "ann")
    assert removed.returncode == 0, removed.stdout + removed.stderr
    assert not seed.exists()
    assert not await can_connect(stack, old)
    assert "no users" in stack["user"]("ls").stdout
    missing = stack["user"]("rm", "ann")
    assert missing.returncode == 2
    assert "no user named 'ann'" in missing.stderr


async def test_a_service_key_rotated_while_it_runs_is_refused_and_the_service_reconnects(
    stack: dict[str, Any], tmp_path: Path
) -> None:
    seed = stack["principals"] / "observer.nk"
    log = stack["logs"] / "observer.log"

    def connected_as() -> list[str]:
        return re.findall(r"connected as (\S+)", log.read_text())

    await wait_until(lambda: true(bool(connected_as())), 60, "the stand-in connected")
    before = public_key(seed)
    assert connected_as()[-1] == before
    old = tmp_path / "old.nk"
    old.write_bytes(seed.read_bytes())

    rotated = stack["key"]("rotate", "observer")
    assert rotated.returncode == 0, rotated.stdout + rotated.stderr
    after = public_key(seed)
    assert after != before
    assert f"observer has a new key ({after})" in rotated.stdout
    assert "observer runs again (pid" in rotated.stdout
    # Restarted by its supervisor, it connected with the new key; the old one is refused.
    await wait_until(lambda: true(connected_as()[-1] == after), 60, "reconnected, new key")
    assert not await can_connect(stack, old)
    listed = {p.name: p for p in principals.load(stack["principals"] / "principals.json").values()}
    assert (listed["observer"].role, listed["observer"].public_key) == ("service", after)

    unknown = stack["key"]("rotate", "nobody")
    assert unknown.returncode == 2, unknown.stdout + unknown.stderr
    assert "no principal named 'nobody'" in unknown.stderr
    assert stack["user"]("add", "bob").returncode == 0
    try:
        user = stack["key"]("rotate", "bob")
        assert user.returncode == 2, user.stdout + user.stderr
        assert "'bob' is a user: `swarm user rotate bob` replaces its key" in user.stderr
    finally:
        stack["user"]("rm", "bob")


def test_users_outlive_a_restart_of_the_listing_and_keep_their_keys(tmp_path: Path) -> None:
    """`swarm up` issues the services' keys again at each start: the users stay, keys intact."""
    issue(tmp_path, [("admin", "admin")])
    ann = add_user(tmp_path, "ann")
    again = issue(tmp_path, [("admin", "admin"), ("pod-0", "pod")])
    assert [(p.name, p.role, p.public_key) for p in again if p.role == "user"] == [
        ("ann", "user", ann.public_key)
    ]
    with pytest.raises(ValueError, match="exists already"):
        add_user(tmp_path, "admin")
    with pytest.raises(ValueError, match="no user named"):
        rotate_user(tmp_path, "admin")  # a service's key is the stack's to issue
    assert [u.name for u in users(tmp_path)] == ["ann"]


def test_a_pid_that_is_not_the_stacks_server_gets_no_signal(tmp_path: Path) -> None:
    """A state file a crashed stack left may name a pid another process holds now: `swarm user`
    signals only the nats-server running on the stack's own configuration."""
    from swarm.cli.user import _is_server

    assert not _is_server(os.getpid(), tmp_path / "nats" / "nats-server.conf")
    assert not _is_server(2**22 + 12345, tmp_path / "nats" / "nats-server.conf")


def test_the_ca_is_kept_and_the_server_certificate_renewed_before_it_expires(
    tmp_path: Path,
) -> None:
    from cryptography import x509

    first = tls.issue(tmp_path / "tls")
    ca, server = first.ca_cert.read_bytes(), first.server_cert.read_bytes()
    again = tls.issue(tmp_path / "tls")
    assert (again.ca_cert.read_bytes(), again.server_cert.read_bytes()) == (ca, server)
    cert = x509.load_pem_x509_certificate(server)
    alt = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert {str(ip) for ip in alt.get_values_for_type(x509.IPAddress)} == {"127.0.0.1", "::1"}
    assert alt.get_values_for_type(x509.DNSName) == ["localhost"]
    cert.verify_directly_issued_by(x509.load_pem_x509_certificate(ca))
    # Near its end the server's certificate is made again, by the same CA.
    late = cert.not_valid_after_utc - datetime.timedelta(days=10)
    renewed = tls.issue(tmp_path / "tls", now=late)
    assert renewed.ca_cert.read_bytes() == ca
    assert renewed.server_cert.read_bytes() != server
    # A server certificate another CA signed is replaced.
    other = tls.issue(tmp_path / "other")
    renewed.server_cert.write_bytes(other.server_cert.read_bytes())
    renewed.server_key.write_bytes(other.server_key.read_bytes())
    fixed = tls.issue(tmp_path / "tls")
    x509.load_pem_x509_certificate(fixed.server_cert.read_bytes()).verify_directly_issued_by(
        x509.load_pem_x509_certificate(ca)
    )
