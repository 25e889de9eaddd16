/* freestanding: an llmc bundle linked with no C library at all (-nostdlib -ffreestanding
 * -static) for AArch64 Linux. Its own _start calls init on the weights embedded in the
 * object (--embed-weights), prefills PROMPT, greedily decodes GENERATE tokens, writes their
 * ids with the write system call and leaves with exit_group(0). The state (KV cache and
 * scratch) is a static buffer in .bss, sized by the header's macro.
 *
 * The Makefile sets LLMC_NAME, LLMC_UPPER, LLMC_HEADER, PROMPT (comma-separated ids) and
 * GENERATE. */

#include <stdint.h>
#include LLMC_HEADER

#define CAT_(a, b) a##b
#define CAT(a, b) CAT_(a, b)
/* FN(init) is <name>_init; MAC(VOCAB) is <NAME>_VOCAB. */
#define FN(x) CAT(LLMC_NAME, CAT(_, x))
#define MAC(x) CAT(LLMC_UPPER, CAT(_, x))

#ifndef PROMPT
#define PROMPT 1
#endif
#ifndef GENERATE
#define GENERATE 8
#endif

static const int32_t prompt[] = {PROMPT};
#define PROMPT_LEN ((int32_t)(sizeof prompt / sizeof prompt[0]))
_Static_assert(sizeof prompt / sizeof prompt[0] <= MAC(MAX_TOKENS), "PROMPT exceeds MAX_TOKENS");
_Static_assert(sizeof prompt / sizeof prompt[0] + GENERATE <= MAC(MAX_CONTEXT),
               "PROMPT + GENERATE exceed MAX_CONTEXT");

static uint8_t state[MAC(STATE_BYTES)] __attribute__((aligned(64)));
static float logits[MAC(MAX_TOKENS) * MAC(VOCAB)];

/* ---- Linux system calls (AArch64: number in x8, arguments in x0..x2, svc #0) ----------- */

static long sys_write(long fd, const void *buf, long len) {
    register long x8 __asm__("x8") = 64; /* write */
    register long x0 __asm__("x0") = fd;
    register long x1 __asm__("x1") = (long)buf;
    register long x2 __asm__("x2") = len;
    __asm__ volatile("svc #0" : "+r"(x0) : "r"(x8), "r"(x1), "r"(x2) : "memory");
    return x0;
}

static void __attribute__((noreturn)) sys_exit_group(long code) {
    register long x8 __asm__("x8") = 94; /* exit_group */
    register long x0 __asm__("x0") = code;
    __asm__ volatile("svc #0" : : "r"(x8), "r"(x0) : "memory");
    for (;;) {
    }
}

/* ---- output ----------------------------------------------------------------------------- */

static char out[16 * (GENERATE + 4)];
static long out_len;

static void put_char(char c) {
    if (out_len < (long)sizeof out) out[out_len++] = c;
}

static void put_str(const char *s) {
    while (*s) put_char(*s++);
}

static void put_int(long v) {
    char digits[24];
    int n = 0;
    if (v < 0) {
        put_char('-');
        v = -v;
    }
    do {
        digits[n++] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    while (n) put_char(digits[--n]);
}

static void __attribute__((noreturn)) fail(const char *what, int code) {
    put_str(what);
    put_str(" failed: error ");
    put_int(code);
    put_char('\n');
    sys_write(2, out, out_len);
    sys_exit_group(code);
}

static int32_t argmax(const float *v) {
    int32_t best = 0;
    for (int32_t i = 1; i < MAC(VOCAB); i++)
        if (v[i] > v[best]) best = i;
    return best;
}

/* ---- entry ------------------------------------------------------------------------------ */

void __attribute__((noreturn, used)) cmain(void) {
    int rc = FN(init)(state, sizeof state, FN(weights), FN(weights_size), 0, 0);
    if (rc) fail("init", rc);
    rc = FN(prefill)(state, prompt, PROMPT_LEN, logits);
    if (rc) fail("prefill", rc);
    int32_t next = argmax(logits + (PROMPT_LEN - 1) * MAC(VOCAB));
    for (int i = 0; i < GENERATE; i++) {
        if (i) put_char(' ');
        put_int(next);
        if (i + 1 == GENERATE) break;
        rc = FN(decode)(state, next, logits);
        if (rc) fail("decode", rc);
        next = argmax(logits);
    }
    put_char('\n');
    sys_write(1, out, out_len);
    sys_exit_group(0);
}

/* The kernel enters here with sp 16-byte aligned; clear the frame chain and call cmain. */
__asm__(".text\n"
        ".global _start\n"
        ".type _start, %function\n"
        "_start:\n"
        "\tmov x29, #0\n"
        "\tmov x30, #0\n"
        "\tbl cmain\n"
        "\tb .\n");
