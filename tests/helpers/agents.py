"""WAT sources of the test agents, assembled with wasmtime.wat2wasm.

`agent()` writes the boilerplate every core agent needs: the host imports it names (with the
signatures from runtime.abi, so tests cannot drift from the ABI), the exported memory and a
toy `swarm_alloc`. The host calls swarm_alloc once per message, so the allocator hands out the
same region from INBOX each time and grows memory when a message does not fit.
"""

from __future__ import annotations

import base64
import struct

import wasmtime

from runtime import abi
from schemas.specs import AgentSpec, ModuleRef

#: Where swarm_alloc puts incoming messages; data segments of the agents stay below it.
INBOX = 4096

_ALLOC = f"""
  (func (export "swarm_alloc") (param $len i32) (result i32)
    (local $end i32)
    (local.set $end (i32.add (i32.const {INBOX}) (local.get $len)))
    (if (i32.gt_u (local.get $end) (i32.mul (memory.size) (i32.const 65536)))
      (then
        (if (i32.eq
              (memory.grow
                (i32.sub (i32.shr_u (i32.add (local.get $end) (i32.const 65535)) (i32.const 16))
                         (memory.size)))
              (i32.const -1))
          (then unreachable))))
    (i32.const {INBOX}))
"""


def _import(name: str) -> str:
    signature = abi.IMPORTS[name]
    params = f"(param {' '.join(signature.params)})" if signature.params else ""
    results = f"(result {' '.join(signature.results)})" if signature.results else ""
    return f'  (import "{abi.IMPORT_MODULE}" "{name}" (func ${name} {params} {results}))'


def agent(body: str, *, imports: tuple[str, ...] = (), memory: str = "1") -> bytes:
    """A core module with `imports`, a memory of `memory` pages, the allocator and `body`."""
    wat = "\n".join(
        [
            "(module",
            *(_import(name) for name in imports),
            f'  (memory (export "memory") {memory})',
            _ALLOC,
            body,
            ")",
        ]
    )
    return bytes(wasmtime.wat2wasm(wat))


#: The smallest swarm_handle: does nothing, successfully.
HANDLE_OK = '  (func (export "swarm_handle") (param i32 i32) (result i32) (i32.const 0))'

ECHO = agent(
    """
  (func (export "swarm_handle") (param $ptr i32) (param $len i32) (result i32)
    (call $reply (local.get $ptr) (local.get $len))
    (i32.const 0))
""",
    imports=("reply",),
)

#: Counts its messages in kv key "count" (i64, little-endian) and replies with the new count.
COUNTER = agent(
    """
  (data (i32.const 16) "count")
  (func (export "swarm_handle") (param $ptr i32) (param $len i32) (result i32)
    (if (i32.eq (call $kv_get (i32.const 16) (i32.const 5) (i32.const 64) (i32.const 8))
                (i32.const -1))
      (then (i64.store (i32.const 64) (i64.const 0))))
    (i64.store (i32.const 64) (i64.add (i64.load (i32.const 64)) (i64.const 1)))
    (drop (call $kv_put (i32.const 16) (i32.const 5) (i32.const 64) (i32.const 8)))
    (call $reply (i32.const 64) (i32.const 8))
    (i32.const 0))
""",
    imports=("kv_get", "kv_put", "reply"),
)

LOOP = agent(
    """
  (func (export "swarm_handle") (param i32 i32) (result i32)
    (loop $forever (br $forever))
    (i32.const 0))
"""
)

#: Grows memory a page at a time and aborts when refused, as a C or Rust allocator does.
MEMORY_BOMB = agent(
    """
  (func (export "swarm_handle") (param i32 i32) (result i32)
    (loop $more
      (if (i32.eq (memory.grow (i32.const 1)) (i32.const -1)) (then unreachable))
      (br $more))
    (i32.const 0))
"""
)

#: Grows memory and ignores the refusal, spinning until its fuel is gone.
MEMORY_SPINNER = agent(
    """
  (func (export "swarm_handle") (param i32 i32) (result i32)
    (loop $more
      (drop (memory.grow (i32.const 1)))
      (br $more))
    (i32.const 0))
"""
)

TRAP = agent(
    """
  (func (export "swarm_handle") (param i32 i32) (result i32)
    unreachable)
"""
)

#: Replies with the number its swarm_init stored in kv "boot" (i64), so tests see init ran.
INIT_FROM_KV = agent(
    """
  (data (i32.const 16) "boot")
  (global $boot (mut i64) (i64.const -1))
  (func (export "swarm_init") (result i32)
    (if (i32.eq (call $kv_get (i32.const 16) (i32.const 4) (i32.const 64) (i32.const 8))
                (i32.const 8))
      (then (global.set $boot (i64.load (i32.const 64)))))
    (i32.const 0))
  (func (export "swarm_handle") (param i32 i32) (result i32)
    (i64.store (i32.const 64) (global.get $boot))
    (call $reply (i32.const 64) (i32.const 8))
    (i32.const 0))
""",
    imports=("kv_get", "reply"),
)

INIT_FAILS = agent(
    """
  (func (export "swarm_init") (result i32) (i32.const 3))
  (func (export "swarm_handle") (param i32 i32) (result i32) (i32.const 0))
"""
)

#: The agent's own error code: a result, not a failure.
STATUS_7 = agent(
    """
  (func (export "swarm_handle") (param i32 i32) (result i32) (i32.const 7))
"""
)

#: swarm_alloc hands out a region past the end of memory.
BAD_ALLOC = bytes(
    wasmtime.wat2wasm(
        """
(module
  (memory (export "memory") 1)
  (func (export "swarm_alloc") (param i32) (result i32) (i32.const 65530))
  (func (export "swarm_handle") (param i32 i32) (result i32) (i32.const 0)))
"""
    )
)

#: Imports a function from "env": the ABI check refuses it (core agents import only "swarm").
ENV_FOO = bytes(
    wasmtime.wat2wasm(
        """
(module
  (import "env" "foo" (func))
  (memory (export "memory") 1)
  (func (export "swarm_alloc") (param i32) (result i32) (i32.const 0))
  (func (export "swarm_handle") (param i32 i32) (result i32) (i32.const 0)))
"""
    )
)

RECURSION = agent(
    """
  (func $down (param $n i64) (result i64)
    (i64.add (call $down (i64.add (local.get $n) (i64.const 1))) (i64.const 1)))
  (func (export "swarm_handle") (param i32 i32) (result i32)
    (drop (call $down (i64.const 0)))
    (i32.const 0))
"""
)

#: A wasm start function calling the host, before the memory is known to it.
START_CALLS_HOST = agent(
    """
  (func $start (call $log (i32.const 1) (i32.const 0) (i32.const 0)))
  (start $start)
  (func (export "swarm_handle") (param i32 i32) (result i32) (i32.const 0))
""",
    imports=("log",),
)


def proxy(name: str) -> bytes:
    """An agent that calls host function `name` with arguments taken from the message.

    Message: u32 `repeat`, then one i32 per parameter, then any payload (at `payload_at(name)`).
    The agent makes the call `repeat` times with the same arguments; for functions that return
    a value it then replies once with all the results (i32 or i64 each, little-endian).
    """
    signature = abi.IMPORTS[name]
    loads = " ".join(
        f"(i32.load (i32.add (local.get $ptr) (i32.const {4 + 4 * i})))"
        for i in range(len(signature.params))
    )
    call = f"(call ${name} {loads})"
    if signature.results == ("i32",):
        step = (
            f"(i32.store (i32.add (i32.const 256) (i32.shl (local.get $i) (i32.const 2))) {call})"
        )
        finish = "(call $reply (i32.const 256) (i32.shl (local.get $n) (i32.const 2)))"
    elif signature.results == ("i64",):
        step = (
            f"(i64.store (i32.add (i32.const 256) (i32.shl (local.get $i) (i32.const 3))) {call})"
        )
        finish = "(call $reply (i32.const 256) (i32.shl (local.get $n) (i32.const 3)))"
    else:
        step, finish = call, ""
    body = f"""
  (func (export "swarm_handle") (param $ptr i32) (param $len i32) (result i32)
    (local $i i32) (local $n i32)
    (local.set $n (i32.load (local.get $ptr)))
    (block $done
      (loop $next
        (br_if $done (i32.ge_u (local.get $i) (local.get $n)))
        {step}
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br $next)))
    {finish}
    (i32.const 0))
"""
    return agent(body, imports=tuple(dict.fromkeys((name, "reply"))))


def reader(name: str) -> bytes:
    """An agent for host functions of type (ptr, len, out_ptr, out_cap) -> i32 (kv_get and
    vector_search), to check what they write.

    Message: u32 `cap`, then the input (key or query). The agent zeroes a `cap`-byte buffer at
    32 KiB (clear of the inbox), makes the call into it, and replies twice: the i32 result,
    then the whole buffer.
    """
    return agent(
        f"""
  (func (export "swarm_handle") (param $ptr i32) (param $len i32) (result i32)
    (local $cap i32)
    (local.set $cap (i32.load (local.get $ptr)))
    (memory.fill (i32.const 32768) (i32.const 0) (local.get $cap))
    (i32.store (i32.const 0)
      (call ${name} (i32.add (local.get $ptr) (i32.const 4))
                    (i32.sub (local.get $len) (i32.const 4))
                    (i32.const 32768) (local.get $cap)))
    (call $reply (i32.const 0) (i32.const 4))
    (call $reply (i32.const 32768) (local.get $cap))
    (i32.const 0))
""",
        imports=(name, "reply"),
    )


def payload_at(name: str) -> int:
    """Absolute address of the payload in a proxy message for `name`."""
    return INBOX + 4 + 4 * len(abi.IMPORTS[name].params)


def proxy_message(*args: int, payload: bytes = b"", repeat: int = 1) -> bytes:
    return struct.pack(f"<I{len(args)}I", repeat, *(a & 0xFFFF_FFFF for a in args)) + payload


def results(reply: bytes, *, wide: bool = False) -> list[int]:
    fmt = "q" if wide else "i"
    return list(struct.unpack(f"<{len(reply) // struct.calcsize(fmt)}{fmt}", reply))


def spec(wasm: bytes, **fields: object) -> AgentSpec:
    """An AgentSpec carrying `wasm` inline, with any other spec fields given."""
    module = ModuleRef(inline=base64.b64encode(wasm).decode())
    return AgentSpec.model_validate({"version": "1.0.0", "module": module, **fields})


#: Where KV_STORE keeps the value it reads or writes of its own (2 MiB; 48 pages of memory).
KV_BUFFER = 2 * 1024 * 1024
KV_BUFFER_CAP = 1024 * 1024

#: A key-value proxy. Message: one op byte, one key-length byte, the key, then the rest.
#: `p`: kv_put(key, rest); `f`: kv_put(key, the u32 `rest` bytes at KV_BUFFER); `d`:
#: kv_delete(key); each replies with the i32 code. `g`: kv_get(key) replies with the i32 result,
#: then the value if there is one.
KV_STORE = agent(
    f"""
  (func (export "swarm_handle") (param $ptr i32) (param $len i32) (result i32)
    (local $op i32) (local $klen i32) (local $key i32) (local $rest i32) (local $rlen i32)
    (local $n i32)
    (local.set $op (i32.load8_u (local.get $ptr)))
    (local.set $klen (i32.load8_u (i32.add (local.get $ptr) (i32.const 1))))
    (local.set $key (i32.add (local.get $ptr) (i32.const 2)))
    (local.set $rest (i32.add (local.get $key) (local.get $klen)))
    (local.set $rlen (i32.sub (i32.sub (local.get $len) (i32.const 2)) (local.get $klen)))
    (if (i32.eq (local.get $op) (i32.const 112))
      (then (local.set $n (call $kv_put (local.get $key) (local.get $klen)
                                        (local.get $rest) (local.get $rlen)))))
    (if (i32.eq (local.get $op) (i32.const 102))
      (then (local.set $n (call $kv_put (local.get $key) (local.get $klen)
                                        (i32.const {KV_BUFFER}) (i32.load (local.get $rest))))))
    (if (i32.eq (local.get $op) (i32.const 100))
      (then (local.set $n (call $kv_delete (local.get $key) (local.get $klen)))))
    (if (i32.eq (local.get $op) (i32.const 103))
      (then
        (local.set $n (call $kv_get (local.get $key) (local.get $klen)
                                    (i32.const {KV_BUFFER}) (i32.const {KV_BUFFER_CAP})))
        (i32.store (i32.const 0) (local.get $n))
        (call $reply (i32.const 0) (i32.const 4))
        (if (i32.ge_s (local.get $n) (i32.const 0))
          (then (call $reply (i32.const {KV_BUFFER}) (local.get $n))))
        (return (i32.const 0))))
    (i32.store (i32.const 0) (local.get $n))
    (call $reply (i32.const 0) (i32.const 4))
    (i32.const 0))
""",
    imports=("kv_get", "kv_put", "kv_delete", "reply"),
    memory="48",
)


def kv_message(op: str, key: str, rest: bytes = b"") -> bytes:
    """A KV_STORE message."""
    raw = key.encode()
    return op.encode() + bytes([len(raw)]) + raw + rest


def kv_fill(key: str, size: int) -> bytes:
    """A KV_STORE message storing `size` bytes of its own memory under `key`."""
    return kv_message("f", key, struct.pack("<I", size))


#: Busy for the u32 number of milliseconds in the message (wall clock, so a loaded machine does
#: not stretch it), then returns 0: holds a worker thread without failing. It reads the clock
#: once per million loop turns, so it almost never leaves wasm (and never takes the GIL).
BUSY = agent(
    """
  (func (export "swarm_handle") (param $ptr i32) (param $len i32) (result i32)
    (local $until i64) (local $i i32)
    (local.set $until
      (i64.add (call $now_ms) (i64.extend_i32_u (i32.load (local.get $ptr)))))
    (loop $spin
      (local.set $i (i32.const 1000000))
      (loop $turn
        (local.set $i (i32.sub (local.get $i) (i32.const 1)))
        (br_if $turn (local.get $i)))
      (br_if $spin (i64.lt_s (call $now_ms) (local.get $until))))
    (i32.const 0))
""",
    imports=("now_ms",),
)

#: Stores u32 `size` bytes of its memory (from 64 KiB on; 17 pages) under the key that follows
#: the size in the message, and replies with kv_put's i32 code: a state hoarder that needs only
#: the first ABI's imports.
HOARD = agent(
    """
  (func (export "swarm_handle") (param $ptr i32) (param $len i32) (result i32)
    (i32.store (i32.const 0)
      (call $kv_put (i32.add (local.get $ptr) (i32.const 4))
                    (i32.sub (local.get $len) (i32.const 4))
                    (i32.const 65536) (i32.load (local.get $ptr))))
    (call $reply (i32.const 0) (i32.const 4))
    (i32.const 0))
""",
    imports=("kv_put", "reply"),
    memory="17",
)


def hoard(key: str, size: int) -> bytes:
    """A HOARD message."""
    return struct.pack("<I", size) + key.encode()
