/* swarm.h: the Swarm core-module ABI (runtime/ABI.md, version 1) for C agents.
 *
 * Declares the host functions of the "swarm" import module and a few freestanding helpers, so
 * an agent builds for wasm32-freestanding with no libc. Only the host functions an agent calls
 * end up as imports of its module; the loader refuses anything else.
 */
#ifndef SWARM_H
#define SWARM_H

#include <stddef.h>
#include <stdint.h>

#define SWARM_IMPORT(name) __attribute__((import_module("swarm"), import_name(name)))
#define SWARM_EXPORT(name) __attribute__((export_name(name), visibility("default")))

/* Return codes of the host functions that return i32. */
enum {
    SWARM_OK = 0,
    SWARM_NOT_FOUND = -1,
    SWARM_LIMIT = -2,
    SWARM_INVALID = -3,
    SWARM_UNAVAILABLE = -4,
};

/* Levels of swarm_log. */
enum {
    SWARM_DEBUG = 0,
    SWARM_INFO = 1,
    SWARM_WARN = 2,
    SWARM_ERROR = 3,
};

/* Host functions. Pointers are offsets into the exported memory, lengths are bytes. */
SWARM_IMPORT("reply") void swarm_reply(const void *ptr, int32_t len);
SWARM_IMPORT("send")
int32_t swarm_send(const char *to, int32_t to_len, const void *msg, int32_t msg_len);
SWARM_IMPORT("emit")
int32_t swarm_emit(const char *type, int32_t type_len, const void *data, int32_t data_len);
SWARM_IMPORT("log") void swarm_log(int32_t level, const char *ptr, int32_t len);
SWARM_IMPORT("kv_get")
int32_t swarm_kv_get(const char *key, int32_t key_len, void *out, int32_t out_cap);
SWARM_IMPORT("kv_put")
int32_t swarm_kv_put(const char *key, int32_t key_len, const void *val, int32_t val_len);
SWARM_IMPORT("now_ms") int64_t swarm_now_ms(void);
SWARM_IMPORT("random") void swarm_random(void *ptr, int32_t len);
SWARM_IMPORT("vector_store") int32_t swarm_vector_store(const char *json, int32_t len);
SWARM_IMPORT("vector_search")
int32_t swarm_vector_search(const char *query, int32_t q_len, char *out, int32_t out_cap);

/* ---- Freestanding helpers (no libc) ---------------------------------------------------- */

static inline size_t swarm_strlen(const char *s) {
    size_t n = 0;
    while (s[n]) n++;
    return n;
}

static inline void swarm_memcpy(void *dst, const void *src, size_t n) {
    unsigned char *d = dst;
    const unsigned char *s = src;
    while (n--) *d++ = *s++;
}

/* NUL-terminated convenience wrappers. */
static inline void swarm_reply_str(const char *s) { swarm_reply(s, (int32_t)swarm_strlen(s)); }

static inline void swarm_log_str(int32_t level, const char *s) {
    swarm_log(level, s, (int32_t)swarm_strlen(s));
}

/* Writes `value` in decimal to `out` (room for 20 digits), returns the number of digits. */
static inline int swarm_u64_to_dec(uint64_t value, char *out) {
    char tmp[20];
    int n = 0;
    do {
        tmp[n++] = (char)('0' + value % 10);
        value /= 10;
    } while (value);
    for (int i = 0; i < n; i++) out[i] = tmp[n - 1 - i];
    return n;
}

/* Parses `len` decimal digits; returns 0 on success, -1 if they are not all digits or overflow. */
static inline int swarm_dec_to_u64(const char *s, int32_t len, uint64_t *out) {
    uint64_t v = 0;
    if (len <= 0) return -1;
    for (int32_t i = 0; i < len; i++) {
        if (s[i] < '0' || s[i] > '9') return -1;
        uint64_t d = (uint64_t)(s[i] - '0');
        if (v > (UINT64_MAX - d) / 10) return -1;
        v = v * 10 + d;
    }
    *out = v;
    return 0;
}

/* ---- A bump allocator for swarm_alloc --------------------------------------------------- *
 * Hands out memory above the linker's __heap_base and grows the memory when it runs out;
 * swarm_arena_reset() frees everything at once (call it when a message has been handled).
 * Returns 0 when memory cannot grow: the host treats an out-of-range result as a trap.
 */
extern unsigned char __heap_base;
static uintptr_t swarm_heap_top;

static inline void *swarm_arena_alloc(size_t len) {
    if (!swarm_heap_top) swarm_heap_top = (uintptr_t)&__heap_base;
    uintptr_t ptr = (swarm_heap_top + 7u) & ~(uintptr_t)7u;
    if (len > SIZE_MAX - ptr) return 0;
    uintptr_t end = ptr + len;
    uintptr_t size = __builtin_wasm_memory_size(0) * 65536u;
    if (end > size) {
        uintptr_t pages = (end - size + 65535u) / 65536u;
        if (__builtin_wasm_memory_grow(0, pages) == (size_t)-1) return 0;
    }
    swarm_heap_top = end;
    return (void *)ptr;
}

static inline void swarm_arena_reset(void) { swarm_heap_top = (uintptr_t)&__heap_base; }

#endif /* SWARM_H */
