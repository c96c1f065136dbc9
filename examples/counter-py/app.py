"""A Python counter agent: every message adds one to a counter kept in the agent's kv state and
replies with the new count. A message `{"remember": "text", "vector": [...]}` also stores the
vector in the agent's vector memory, and `{"recall": [...]}` replies with the nearest one.

Build it with `swarm agent build examples/counter-py/app.py -o counter.wasm`.
"""

import json

import swarm_agent as swarm


class Handler(swarm.Agent):
    def init(self) -> int:
        swarm.log(f"starting at count {_count()}")
        return 0

    def handle(self, message: bytes) -> int:
        request = _parse(message)
        if "recall" in request:
            hits = swarm.vector_search(request["recall"], k=1)
            swarm.reply_json(hits[0]["data"] if hits else None)
            return 0
        # The count lives in kv, not in the instance, so a restarted agent continues from it.
        count = _count() + 1
        swarm.kv_put("count", str(count))
        if "remember" in request:
            swarm.vector_store(f"m{count}", request["vector"], request["remember"])
        swarm.reply(str(count))
        return 0


def _count() -> int:
    return int(swarm.kv_get("count") or b"0")


def _parse(message: bytes) -> dict:
    try:
        value = json.loads(message)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}
