;; The smallest useful Swarm agent: it replies to every message with the message itself.
;;
;; Deploy it straight from this file (the CLI assembles WAT):
;;   swarm agent deploy echo --module examples/echo/echo.wat
;;   swarm agent send echo '{"hello": "swarm"}'
;;
;; The contract it implements is runtime/ABI.md: export `memory`, `swarm_alloc` (where the host
;; may write the next message) and `swarm_handle` (called once per message).
(module
  (import "swarm" "reply" (func $reply (param i32 i32)))
  (import "swarm" "log" (func $log (param i32 i32 i32)))

  (memory (export "memory") 1)
  (data (i32.const 16) "echoing a message")

  ;; Messages land at offset 4096; grow memory when one does not fit, trap when it cannot grow.
  (func (export "swarm_alloc") (param $len i32) (result i32)
    (local $end i32)
    (local.set $end (i32.add (i32.const 4096) (local.get $len)))
    (if (i32.gt_u (local.get $end) (i32.mul (memory.size) (i32.const 65536)))
      (then
        (if (i32.eq
              (memory.grow
                (i32.sub (i32.shr_u (i32.add (local.get $end) (i32.const 65535)) (i32.const 16))
                         (memory.size)))
              (i32.const -1))
          (then unreachable))))
    (i32.const 4096))

  (func (export "swarm_handle") (param $ptr i32) (param $len i32) (result i32)
    (call $log (i32.const 0) (i32.const 16) (i32.const 17))   ;; level 0 = debug
    (call $reply (local.get $ptr) (local.get $len))
    (i32.const 0))
)
