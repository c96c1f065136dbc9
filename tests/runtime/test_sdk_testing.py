"""swarm_agent.testing: an agent's Handler in-process against the pod's own host functions.

No component is built here: these tests are what an agent author runs without a stack.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
import swarm_agent
from swarm_agent._local import OutsideComponent
from swarm_agent.testing import AgentError, AgentHarness

from runtime.errors import AgentTrap, InitFailed
from runtime.kvstate import StateCaps
from runtime.limits import SandboxLimits

ROOT = Path(__file__).resolve().parents[2]
COUNTER_APP = ROOT / "examples" / "counter-py" / "app.py"


def _app(tmp_path: Path, body: str, name: str = "app.py") -> Path:
    path = tmp_path / name
    path.write_text("import swarm_agent as swarm\n\n" + textwrap.dedent(body))
    return path


def test_counter_counts_and_continues_after_a_restart() -> None:
    with AgentHarness(COUNTER_APP) as agent:
        assert agent.send(b"{}") == b"1"
        assert agent.send("not json") == b"2"
        assert agent.kv == {"count": b"2"}
        agent.restart()
        assert agent.send(b"{}") == b"3"
        assert [line.message for line in agent.logs] == [
            "starting at count 0",
            "starting at count 2",
        ]


def test_counter_starts_from_restored_state() -> None:
    with AgentHarness(COUNTER_APP, kv={"count": "41"}) as agent:
        assert agent.send(b"{}") == b"42"


def test_counter_remembers_and_recalls_vectors() -> None:
    with AgentHarness(COUNTER_APP) as agent:
        assert agent.send_json({"remember": "cats purr", "vector": [1, 0, 0]}) == 1
        assert agent.send_json({"remember": "dogs bark", "vector": [0, 1, 0]}) == 2
        assert agent.send_json({"recall": [0.9, 0.1, 0]}) == "cats purr"


def test_host_functions_check_what_a_pod_checks(tmp_path: Path) -> None:
    app = _app(
        tmp_path,
        """
        class Handler(swarm.Agent):
            def handle(self, message: bytes) -> int:
                if message == b"spam":
                    for _ in range(17):  # the call budget allows 16 replies
                        swarm.reply(b"x")
                elif message == b"fill":
                    try:
                        swarm.kv_put("big", b"x" * 200)
                    except swarm.LimitError:
                        swarm.reply(b"full")
                elif message == b"fetch":
                    try:
                        swarm.http_request("GET", "https://example.com/")
                    except swarm.HostError as exc:
                        swarm.reply(str(exc.code))
                elif message == b"bad-key":
                    try:
                        swarm.kv_put("", b"x")
                    except swarm.HostError as exc:
                        swarm.reply(str(exc.code))
                return 0
        """,
    )
    limits = SandboxLimits(state_bytes=100, state_keys=10)
    with AgentHarness(app, limits=limits) as agent:
        assert agent.send(b"fill") == b"full"
        assert agent.kv == {}
        assert agent.send(b"fetch") == str(swarm_agent.DENIED).encode()  # no "net" capability
        assert agent.send(b"bad-key") == str(swarm_agent.INVALID).encode()
        with pytest.raises(AgentTrap, match="more than 16 replies"):
            agent.send(b"spam")
    assert StateCaps(100, 10) == limits.state_caps


def test_a_trap_is_raised_even_if_the_agent_swallows_it(tmp_path: Path) -> None:
    app = _app(
        tmp_path,
        """
        class Handler(swarm.Agent):
            def handle(self, message: bytes) -> int:
                try:
                    swarm.random(1 << 20)  # over the per-call random budget: a trap in a pod
                except Exception:
                    pass
                return 0
        """,
    )
    with AgentHarness(app) as agent, pytest.raises(AgentTrap, match="random bytes"):
        agent.send(b"")


def test_status_exceptions_and_bad_returns(tmp_path: Path) -> None:
    app = _app(
        tmp_path,
        """
        class Handler(swarm.Agent):
            def handle(self, message: bytes) -> int:
                if message == b"boom":
                    raise ValueError("boom")
                if message == b"none":
                    return None
                swarm.reply(b"no ")
                swarm.reply(b"way")
                return 7
        """,
    )
    with AgentHarness(app) as agent:
        result = agent.call(b"x")
        assert (result.status, result.replies, result.body) == (7, (b"no ", b"way"), b"no way")
        with pytest.raises(AgentError, match="handle returned 7") as failed:
            agent.send(b"x")
        assert failed.value.result == result
        with pytest.raises(ValueError, match="boom"):
            agent.send(b"boom")
        with pytest.raises(TypeError, match="must return an int"):
            agent.send(b"none")
        with pytest.raises(ValueError, match="exceeds"):
            agent.send(b"x" * (2 * 1024 * 1024))


def test_init_failure_and_missing_handler(tmp_path: Path) -> None:
    failing = _app(
        tmp_path,
        """
        class Handler(swarm.Agent):
            def init(self) -> int:
                return 3
        """,
        "failing.py",
    )
    with pytest.raises(InitFailed, match="init returned 3"):
        AgentHarness(failing).start()
    empty = _app(tmp_path, "X = 1\n", "empty.py")
    harness = AgentHarness(empty)
    with pytest.raises(TypeError, match="no class Handler"):
        harness.start()
    harness.close()
    with pytest.raises(FileNotFoundError):
        AgentHarness(tmp_path / "missing.py").start()


def test_each_instance_starts_from_a_fresh_module_with_its_siblings(tmp_path: Path) -> None:
    (tmp_path / "greeting.py").write_text("WORD = 'hello'\n")
    app = _app(
        tmp_path,
        """
        import greeting

        CALLS = []


        class Handler(swarm.Agent):
            def handle(self, message: bytes) -> int:
                CALLS.append(message)
                swarm.reply(f"{greeting.WORD} {len(CALLS)}")
                return 0
        """,
    )
    with AgentHarness(app) as agent:
        assert agent.send(b"a") == b"hello 1"
        assert agent.send(b"b") == b"hello 2"
        agent.restart()  # module-level lists are not state: a new instance starts without them
        assert agent.send(b"c") == b"hello 1"


def test_sends_events_and_env_are_recorded(tmp_path: Path) -> None:
    app = _app(
        tmp_path,
        """
        class Handler(swarm.Agent):
            def handle(self, message: bytes) -> int:
                swarm.send("agent:other", message)
                swarm.emit("order.placed", b'{"id": 1}')
                swarm.log("done", swarm.WARN)
                return 0
        """,
    )
    with AgentHarness(app) as agent:
        assert agent.send(b"hi") == b""
        assert [(str(m.to), m.message) for m in agent.sent] == [("agent:other", b"hi")]
        assert [(e.type, e.data) for e in agent.events] == [("order.placed", b'{"id": 1}')]
        assert agent.logs[-1].message == "done"


def test_host_functions_outside_a_harness_say_what_to_do() -> None:
    with pytest.raises(OutsideComponent, match="AgentHarness"):
        swarm_agent.kv_get("count")
    harness = AgentHarness(COUNTER_APP)
    with harness:
        assert harness.send(b"{}") == b"1"
    harness.close()  # twice is fine
    with pytest.raises(OutsideComponent):
        swarm_agent.reply(b"x")
    with pytest.raises(RuntimeError, match="not running"):
        harness.send(b"{}")


def _python_blocks(path: Path) -> list[str]:
    blocks, current, inside = [], [], False
    for line in path.read_text().splitlines():
        if line.startswith("```"):
            if inside:
                blocks.append("\n".join(current) + "\n")
            inside, current = line == "```python", []
        elif inside:
            current.append(line)
    return blocks


def test_the_guides_agent_passes_the_guides_test(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """runtime/sdk/README.md: its first agent and its unit test, run as written."""
    agent, *rest = _python_blocks(ROOT / "runtime" / "sdk" / "README.md")
    test = next(block for block in rest if "AgentHarness" in block)
    (tmp_path / "app.py").write_text(agent)
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, object] = {}
    exec(compile(test, "guide_test.py", "exec"), namespace)
    tests = [fn for name, fn in namespace.items() if name.startswith("test_") and callable(fn)]
    assert len(tests) == 1
    tests[0]()
