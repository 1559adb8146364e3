/*
 * common.h: what loadgen.c and fanout.c share.  The clocks (CLOCK_MONOTONIC, the process's
 * CPU time), the hard time limit's alarm handler, the latency histogram and its JSON fields,
 * the number parsers of the command line and WARN.
 *
 * Static functions only, so that each program stays one translation unit, built by one
 * command (`cc -O2 -o .build/fanout loadgen/fanout.c -lm`: the compiler finds this file beside
 * the source).  A program defines PROG (its name, a string literal, for its messages) before
 * including it, and a `static int warnings_left` (how many diagnostics WARN still prints).
 */
#ifndef BENCH_COMMON_H
#define BENCH_COMMON_H

#ifndef PROG
#error "define PROG (the program's name) before including common.h"
#endif

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

/* A diagnostic on stderr, while warnings_left lasts: a hundred failures stay a few lines. */
#define WARN(...)                                                                              \
    do {                                                                                       \
        if (warnings_left > 0) {                                                               \
            warnings_left--;                                                                   \
            fprintf(stderr, __VA_ARGS__);                                                      \
        }                                                                                      \
    } while (0)

static inline uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* CPU seconds this process has used so far (user + system), or 0 when unknown. */
static inline double cpu_seconds(void) {
    struct rusage ru;
    if (getrusage(RUSAGE_SELF, &ru) != 0) return 0.0;
    return (double)(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) +
           (double)(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e6;
}

/* SIGALRM: the program overran every deadline; say so in its JSON line and exit 4. */
static inline void on_alarm(int sig) {
    (void)sig;
    static const char msg[] = "{\"ok\": false, \"error\": \"" PROG " hard time limit reached\"}\n";
    ssize_t r = write(1, msg, sizeof msg - 1);
    (void)r;
    _exit(4);
}

/* ---- latency histogram ---- */

/* Log-linear buckets of nanoseconds, 64 sub-buckets per power of two (relative error under
 * 1.6 %), up to 2^40 ns (about 18 minutes). */
#define SUB_BITS 6
#define SUB_COUNT (1u << SUB_BITS)
#define MAX_EXP 40
#define HIST_SIZE ((MAX_EXP - SUB_BITS + 2) * SUB_COUNT)

static uint64_t hist[HIST_SIZE];
static uint64_t lat_count, lat_max_ns;
static double lat_sum_ns;

static inline unsigned hist_index(uint64_t v) {
    if (v < 2 * SUB_COUNT) return (unsigned)v;
    unsigned msb = 63u - (unsigned)__builtin_clzll(v);
    if (msb > MAX_EXP) return HIST_SIZE - 1;
    unsigned e = msb - SUB_BITS; /* v >> e lies in [SUB_COUNT, 2 * SUB_COUNT) */
    return (e + 1) * SUB_COUNT + (unsigned)((v >> e) - SUB_COUNT);
}

/* Middle of the bucket's range, in nanoseconds. */
static inline double hist_value(unsigned idx) {
    if (idx < 2 * SUB_COUNT) return (double)idx;
    unsigned e = idx / SUB_COUNT - 1;
    uint64_t low = (uint64_t)(idx % SUB_COUNT + SUB_COUNT) << e;
    return (double)low + (double)((1ull << e) - 1) / 2.0;
}

static inline void hist_record(uint64_t ns) {
    hist[hist_index(ns)]++;
    lat_count++;
    lat_sum_ns += (double)ns;
    if (ns > lat_max_ns) lat_max_ns = ns;
}

static inline double hist_percentile_us(double p) {
    if (lat_count == 0) return 0.0;
    uint64_t rank = (uint64_t)ceil(p * (double)lat_count);
    if (rank < 1) rank = 1;
    uint64_t seen = 0;
    for (unsigned i = 0; i < HIST_SIZE; i++) {
        seen += hist[i];
        if (seen >= rank) {
            double v = hist_value(i);
            if (v > (double)lat_max_ns) v = (double)lat_max_ns;
            return v / 1000.0;
        }
    }
    return (double)lat_max_ns / 1000.0;
}

/* The latency fields of the JSON line, each followed by ", ". */
static inline void print_latency_json(void) {
    printf("\"p50_us\": %.1f, \"p90_us\": %.1f, \"p99_us\": %.1f, \"p999_us\": %.1f, "
           "\"max_us\": %.1f, \"mean_us\": %.1f, ",
           hist_percentile_us(0.50), hist_percentile_us(0.90), hist_percentile_us(0.99),
           hist_percentile_us(0.999), (double)lat_max_ns / 1000.0,
           lat_count ? lat_sum_ns / (double)lat_count / 1000.0 : 0.0);
}

/* ---- the command line: a bad number is a usage error (exit 2) ---- */

static inline double parse_double(const char *s, const char *name, double hi) {
    char *end;
    double v = strtod(s, &end);
    if (*s == '\0' || *end != '\0' || !(v >= 0) || v > hi) {
        fprintf(stderr, PROG ": bad %s: %s\n", name, s);
        exit(2);
    }
    return v;
}

static inline long parse_long(const char *s, const char *name, long lo, long hi) {
    char *end;
    long v = strtol(s, &end, 10);
    if (*s == '\0' || *end != '\0' || v < lo || v > hi) {
        fprintf(stderr, PROG ": bad %s: %s (allowed %ld..%ld)\n", name, s, lo, hi);
        exit(2);
    }
    return v;
}

#endif
