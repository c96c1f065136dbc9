/* A counter agent in C: counts its messages in kv key "count" (decimal text), replies with the
 * new count as decimal text and logs each message at info level. See README.md to build it. */
#include "swarm.h"

#define KEY "count"
#define LOG_PREVIEW 200

SWARM_EXPORT("swarm_alloc") void *swarm_alloc(int32_t len) {
    return swarm_arena_alloc((size_t)(uint32_t)len);
}

SWARM_EXPORT("swarm_handle") int32_t swarm_handle(const char *msg, int32_t len) {
    char digits[24];
    uint64_t count = 0;
    int32_t n = swarm_kv_get(KEY, sizeof KEY - 1, digits, sizeof digits);
    if (n >= 0 && (n > (int32_t)sizeof digits || swarm_dec_to_u64(digits, n, &count) != 0)) {
        swarm_log_str(SWARM_ERROR, "counter: kv key \"count\" does not hold a decimal number");
        swarm_arena_reset();
        return 1;
    }
    if (n < 0 && n != SWARM_NOT_FOUND) {
        swarm_arena_reset();
        return 2;
    }
    count++;
    int len_digits = swarm_u64_to_dec(count, digits);
    if (swarm_kv_put(KEY, sizeof KEY - 1, digits, len_digits) != SWARM_OK) {
        swarm_arena_reset();
        return 3;
    }

    /* "message 3: <first bytes of the message>" */
    static const char prefix[] = "message ";
    char line[sizeof prefix - 1 + 20 + 2 + LOG_PREVIEW];
    int32_t at = 0;
    swarm_memcpy(line, prefix, sizeof prefix - 1);
    at += sizeof prefix - 1;
    swarm_memcpy(line + at, digits, (size_t)len_digits);
    at += len_digits;
    line[at++] = ':';
    line[at++] = ' ';
    int32_t preview = len < LOG_PREVIEW ? len : LOG_PREVIEW;
    swarm_memcpy(line + at, msg, (size_t)preview);
    at += preview;
    swarm_log(SWARM_INFO, line, at);

    swarm_reply(digits, len_digits);
    swarm_arena_reset(); /* the message buffer is ours; free it with everything else */
    return 0;
}
