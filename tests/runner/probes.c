/* probes.c: serves calls of the functions in a probe object, for the ISA tests
 * (tests/src/probes.rs builds the object, starts this server natively or under
 * qemu-aarch64, and sends it calls through a pipe).
 *
 * Built per object: cc -O1 probes.c probes.o -o probes
 * The object defines `llmc_probes` (an array of `llmc_probe_count` kernel functions
 * `void f(const int64_t *args, int64_t begin, int64_t end)`).
 *
 * Requests on stdin, until it ends (little-endian):
 *   u32 function, u32 nargs, nargs × {u32 kind, i64 value}, u64 in_bytes, in data,
 *   u64 out_bytes, i64 begin, i64 end
 *   kind 0: the value itself; 1: the input buffer plus value bytes; 2: the output buffer
 *   plus value bytes. Both buffers are 64-byte aligned with 256 bytes to spare; the output
 *   starts zeroed.
 * Reply on stdout: u64 out_bytes, then the output buffer.
 */
#define _POSIX_C_SOURCE 200809L
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef void (*probe_fn)(const int64_t *args, int64_t begin, int64_t end);
extern const probe_fn llmc_probes[];
extern const uint32_t llmc_probe_count;

static void die(const char *what) {
    fprintf(stderr, "probes: %s\n", what);
    exit(2);
}

static void *xalloc(uint64_t bytes) {
    void *p = NULL;
    if (posix_memalign(&p, 64, bytes + 256) != 0) die("out of memory");
    memset(p, 0, bytes + 256);
    return p;
}

/* Reads n bytes; returns 0 at a clean end of input before the first byte. */
static int get(void *dst, size_t n, int eof_ok) {
    size_t got = fread(dst, 1, n, stdin);
    if (got == n) return 1;
    if (got == 0 && eof_ok && feof(stdin)) return 0;
    die("truncated request");
    return 0;
}

int main(void) {
    for (;;) {
        uint32_t fn, nargs;
        if (!get(&fn, 4, 1)) return 0;
        get(&nargs, 4, 0);
        if (fn >= llmc_probe_count) die("no such function");
        uint32_t *kinds = malloc(sizeof(uint32_t) * (nargs ? nargs : 1));
        int64_t *values = malloc(sizeof(int64_t) * (nargs ? nargs : 1));
        int64_t *args = malloc(sizeof(int64_t) * (nargs ? nargs : 1));
        if (!kinds || !values || !args) die("out of memory");
        for (uint32_t i = 0; i < nargs; i++) {
            get(&kinds[i], 4, 0);
            get(&values[i], 8, 0);
        }
        uint64_t in_bytes, out_bytes;
        get(&in_bytes, 8, 0);
        uint8_t *in = xalloc(in_bytes);
        if (in_bytes) get(in, in_bytes, 0);
        get(&out_bytes, 8, 0);
        uint8_t *out = xalloc(out_bytes);
        int64_t begin, end;
        get(&begin, 8, 0);
        get(&end, 8, 0);
        for (uint32_t i = 0; i < nargs; i++) {
            switch (kinds[i]) {
            case 0: args[i] = values[i]; break;
            case 1: args[i] = (int64_t)(intptr_t)(in + values[i]); break;
            case 2: args[i] = (int64_t)(intptr_t)(out + values[i]); break;
            default: die("bad argument kind");
            }
        }
        llmc_probes[fn](args, begin, end);
        if (fwrite(&out_bytes, 8, 1, stdout) != 1) die("write");
        if (out_bytes && fwrite(out, 1, out_bytes, stdout) != out_bytes) die("write");
        fflush(stdout);
        free(in);
        free(out);
        free(kinds);
        free(values);
        free(args);
    }
}
