/*
 * loadgen: a single-threaded epoll load generator for length-prefixed frames.
 *
 * Wire format: a 4-byte unsigned big-endian length N, then N payload bytes.  Every connection
 * keeps `depth` requests in flight: it sends `depth` frames, and each whole reply frame it
 * receives lets it send one more.  Replies are matched to requests in FIFO order per
 * connection, which gives the latency of each request (from the moment it was queued for
 * sending to the moment its whole reply frame was parsed).
 *
 * Phases: connect (bounded by --connect-timeout), optional settle (each connection sends one
 * request and everything received is discarded; for servers that greet a client after its
 * first byte), warmup (load, nothing recorded), measure (load, everything recorded).  The
 * program always ends by itself: every wait is bounded by the phase deadlines, and an alarm
 * ends the process a few seconds after the last deadline even if something goes wrong.
 *
 * Output: one JSON line on stdout (see print_result).  Diagnostics go to stderr.
 * Exit status: 0 when the run happened (even with errors counted in the JSON), 2 on bad usage,
 * 3 when no connection could be made, 4 when the alarm fired.
 *
 * Speed: nonblocking sockets, level-triggered epoll, one writev per connection per wakeup, done
 * after all the wakeup's reads (all the frames that connection owes, pointing at one shared
 * frame buffer: no copies),
 * reads of up to 256 KiB into one shared buffer, and an in-place streaming frame parser.
 *
 * TLS (--tls; only when compiled with -DLOADGEN_TLS and linked with -lssl -lcrypto, as
 * .build/loadgen-tls is): every connection makes its own full handshake (no session cache, no
 * tickets, no resumption) during the connect phase, so no handshake falls in the measured
 * window.  Then the same loop runs with SSL_read and SSL_write on nonblocking sockets: reads
 * use read-ahead (many records per read system call) and go on until OpenSSL wants more from
 * the socket; a connection's queued frames go out in one SSL_write over a buffer of identical
 * frames side by side (partial writes on, so it returns as soon as some records are sent).
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <math.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>
#ifdef LOADGEN_TLS
#include <openssl/err.h>
#include <openssl/ssl.h>
#endif

#define PROG "loadgen"
#include "common.h" /* shared with fanout.c: clocks, histogram, number parsers, WARN */

#define READ_BUF_SIZE (256 * 1024)
#define MAX_IOV 64
#define MAX_EVENTS 256
#define MAX_SECONDS 86400 /* the longest time option accepted */

enum phase { PH_CONNECT, PH_SETTLE, PH_WARMUP, PH_MEASURE, PH_DONE };

struct conn {
    int fd;
    int alive;
    int connected;
    int want_out;        /* EPOLLOUT is registered */
    uint64_t pending;    /* frames queued for sending, the first possibly partly sent */
    size_t partial;      /* bytes of the first pending frame already sent */
    uint64_t *fifo;      /* send times (ns) of the requests in flight, oldest first */
    uint32_t fifo_head, fifo_count, fifo_cap;
    uint8_t hdr[4];
    uint32_t hdr_have;   /* header bytes of the current frame received so far (0..4) */
    uint32_t body_len, body_left;
    int mismatch;        /* the current frame differs from the expected reply */
    uint64_t replies;    /* replies in the measurement window */
    int dirty;           /* on the list of connections to flush after this wakeup */
#ifdef LOADGEN_TLS
    SSL *ssl;            /* NULL without --tls */
    int handshaken;
    int read_wants_write, write_wants_read; /* OpenSSL needs the other direction first */
#endif
};

static struct {
    const char *host;
    const char *port;
    int connections;
    long size;
    int depth;
    double duration, warmup, settle, connect_timeout;
    const char *prefix;
    const char *payload_file;
    int verify;
    int after_prefix; /* the expected reply is the payload after --prefix */
    uint32_t max_frame;
    int tls;
    const char *tls_ca;          /* verify the server's chain against this PEM file */
    const char *tls_server_name; /* SNI, and the name verified with --tls-ca */
} opt = {"127.0.0.1", NULL, 10, 64, 1, 5.0, 1.0, 0.0, 3.0, NULL, NULL, 1, 0, 16u << 20,
         0, NULL, NULL};

static uint8_t *frame;      /* header + payload of the one request every connection sends */
static size_t frame_len;
static uint8_t *payload;
static uint32_t payload_len;
static const uint8_t *expected; /* the reply each request must get (with verification on) */
static uint32_t expected_len;
static uint8_t rbuf[READ_BUF_SIZE];

static enum phase phase = PH_CONNECT;
static uint64_t replies_total, reply_bytes, discarded, unexpected, mismatches;
static uint64_t conn_errors, connect_failures;
static int epfd;
static struct conn **dirty; /* connections with requests queued during this wakeup */
static int ndirty;
static int warnings_left = 5; /* diagnostics printed to stderr, so that 100 failures stay short */
#ifdef LOADGEN_TLS
static SSL_CTX *tls_ctx;
static uint8_t *frames;      /* the request frame repeated frames_count times, for SSL_write */
static uint64_t frames_count;
static char tls_version[32], tls_cipher[64];
#endif

static double cpu_share; /* CPU time used while measuring / the measured time */

/* ---- connections ---- */

static void conn_set_out(struct conn *c, int want) {
    if (c->want_out == want) return;
    struct epoll_event ev = {.events = EPOLLIN | (want ? EPOLLOUT : 0), .data.ptr = c};
    if (epoll_ctl(epfd, EPOLL_CTL_MOD, c->fd, &ev) == 0) c->want_out = want;
}

static void conn_close(struct conn *c, int is_error) {
    if (!c->alive) return;
    epoll_ctl(epfd, EPOLL_CTL_DEL, c->fd, NULL);
#ifdef LOADGEN_TLS
    if (c->ssl) {
        /* A close_notify, so that servers see a clean close rather than a truncation. */
        if (!is_error && c->handshaken) SSL_shutdown(c->ssl);
        SSL_free(c->ssl);
        c->ssl = NULL;
    }
#endif
    close(c->fd);
    c->alive = 0;
    if (is_error) conn_errors++;
}

static void fifo_push(struct conn *c, uint64_t t) {
    if (c->fifo_count == c->fifo_cap) return; /* cannot happen: in flight <= depth */
    c->fifo[(c->fifo_head + c->fifo_count) % c->fifo_cap] = t;
    c->fifo_count++;
}

static void queue_request(struct conn *c, uint64_t t) {
    fifo_push(c, t);
    c->pending++;
    if (!c->dirty) {
        c->dirty = 1;
        dirty[ndirty++] = c;
    }
}

#ifdef LOADGEN_TLS
static void tls_warn(const char *what, int ssl_error) {
    unsigned long e = ERR_get_error();
    char buf[256] = "";
    if (e) ERR_error_string_n(e, buf, sizeof buf);
    else if (ssl_error == SSL_ERROR_SYSCALL) snprintf(buf, sizeof buf, "%s",
                                                      errno ? strerror(errno) : "unexpected EOF");
    else snprintf(buf, sizeof buf, "SSL error %d", ssl_error);
    WARN("loadgen: %s: %s\n", what, buf);
    ERR_clear_error();
}

/* The TLS version of conn_flush: one SSL_write over as many whole frames as are owed. */
static int conn_flush_tls(struct conn *c) {
    c->write_wants_read = 0;
    while (c->pending > 0) {
        uint64_t k = c->pending < frames_count ? c->pending : frames_count;
        size_t len = (size_t)k * frame_len - c->partial;
        ERR_clear_error();
        int w = SSL_write(c->ssl, frames + c->partial, (int)len);
        if (w <= 0) {
            int e = SSL_get_error(c->ssl, w);
            if (e == SSL_ERROR_WANT_WRITE) {
                conn_set_out(c, 1);
                return 0;
            }
            if (e == SSL_ERROR_WANT_READ) { /* retried after the next read (EPOLLIN is on) */
                c->write_wants_read = 1;
                if (!c->read_wants_write) conn_set_out(c, 0);
                return 0;
            }
            tls_warn("SSL_write", e);
            return -1;
        }
        size_t done = (size_t)w + c->partial;
        c->pending -= done / frame_len;
        c->partial = done % frame_len;
    }
    if (!c->read_wants_write) conn_set_out(c, 0);
    return 0;
}
#endif

/* Sends what the connection owes.  Returns -1 when the connection failed. */
static int conn_flush(struct conn *c) {
#ifdef LOADGEN_TLS
    if (c->ssl) return conn_flush_tls(c);
#endif
    while (c->pending > 0) {
        struct iovec iov[MAX_IOV];
        int n = 0;
        size_t off = c->partial, total = 0;
        for (uint64_t k = c->pending; n < MAX_IOV && k > 0; k--, n++) {
            iov[n].iov_base = frame + off;
            iov[n].iov_len = frame_len - off;
            total += frame_len - off;
            off = 0;
        }
        ssize_t w = writev(c->fd, iov, n);
        if (w < 0) {
            if (errno == EINTR) continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK) {
                conn_set_out(c, 1);
                return 0;
            }
            return -1;
        }
        size_t done = (size_t)w + c->partial;
        c->pending -= done / frame_len;
        c->partial = done % frame_len;
        if ((size_t)w < total) { /* the socket buffer is full */
            conn_set_out(c, 1);
            return 0;
        }
    }
    conn_set_out(c, 0);
    return 0;
}

static void frame_done(struct conn *c, uint64_t t) {
    if (phase == PH_SETTLE) {
        discarded++;
        return;
    }
    if (c->fifo_count == 0) { /* a frame nobody asked for (a greeting, an event) */
        unexpected++;
        return;
    }
    uint64_t sent = c->fifo[c->fifo_head];
    c->fifo_head = (c->fifo_head + 1) % c->fifo_cap;
    c->fifo_count--;
    if (c->mismatch) mismatches++;
    if (phase == PH_MEASURE) {
        hist_record(t > sent ? t - sent : 0);
        c->replies++;
        replies_total++;
        reply_bytes += 4u + c->body_len;
    }
    if (phase == PH_WARMUP || phase == PH_MEASURE) queue_request(c, t);
}

/* Parses received bytes in place.  Returns -1 on a protocol error. */
static int conn_consume(struct conn *c, const uint8_t *p, size_t n, uint64_t t) {
    while (n > 0) {
        if (c->hdr_have < 4) {
            if (c->hdr_have == 0 && n >= 4) {
                memcpy(c->hdr, p, 4);
                c->hdr_have = 4;
                p += 4;
                n -= 4;
            } else {
                c->hdr[c->hdr_have++] = *p++;
                n--;
            }
            if (c->hdr_have == 4) {
                uint32_t len = ((uint32_t)c->hdr[0] << 24) | ((uint32_t)c->hdr[1] << 16) |
                               ((uint32_t)c->hdr[2] << 8) | (uint32_t)c->hdr[3];
                if (len > opt.max_frame) {
                    WARN("loadgen: reply frame of %u bytes is over the limit\n", len);
                    return -1;
                }
                c->body_len = c->body_left = len;
                c->mismatch = opt.verify && len != expected_len;
                if (len == 0) {
                    c->hdr_have = 0;
                    frame_done(c, t);
                }
            }
        } else {
            size_t take = c->body_left < n ? c->body_left : n;
            if (opt.verify && !c->mismatch) {
                size_t at = c->body_len - c->body_left;
                if (memcmp(p, expected + at, take) != 0) c->mismatch = 1;
            }
            p += take;
            n -= take;
            c->body_left -= (uint32_t)take;
            if (c->body_left == 0) {
                c->hdr_have = 0;
                frame_done(c, t);
            }
        }
    }
    return 0;
}

#ifdef LOADGEN_TLS
/* Reads until OpenSSL needs more bytes from the socket: with read-ahead, decrypted or raw
 * bytes may sit in OpenSSL's buffers, where level-triggered epoll cannot see them.  Bounded
 * in practice by what the server owes (never more than --depth replies per connection). */
static void conn_readable_tls(struct conn *c) {
    c->read_wants_write = 0;
    for (;;) {
        ERR_clear_error();
        int r = SSL_read(c->ssl, rbuf, (int)sizeof rbuf);
        if (r <= 0) {
            int e = SSL_get_error(c->ssl, r);
            if (e == SSL_ERROR_WANT_READ) break;
            if (e == SSL_ERROR_WANT_WRITE) { /* retried when the socket is writable */
                c->read_wants_write = 1;
                conn_set_out(c, 1);
                break;
            }
            if (e == SSL_ERROR_ZERO_RETURN) WARN("loadgen: the server closed a connection\n");
            else tls_warn("SSL_read", e);
            conn_close(c, 1);
            return;
        }
        if (conn_consume(c, rbuf, (size_t)r, now_ns()) < 0) {
            conn_close(c, 1);
            return;
        }
    }
    if (c->write_wants_read && c->pending > 0 && !c->dirty) {
        c->dirty = 1;
        dirty[ndirty++] = c;
    }
}
#endif

static void conn_readable(struct conn *c) {
#ifdef LOADGEN_TLS
    if (c->ssl) {
        conn_readable_tls(c);
        return;
    }
#endif
    for (int i = 0; i < 4; i++) { /* bounded: at most 1 MiB per wakeup per connection */
        ssize_t r = read(c->fd, rbuf, sizeof rbuf);
        if (r < 0) {
            if (errno == EINTR) continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK) break;
            WARN("loadgen: read: %s\n", strerror(errno));
            conn_close(c, 1);
            return;
        }
        if (r == 0) {
            WARN("loadgen: the server closed a connection\n");
            conn_close(c, 1);
            return;
        }
        if (conn_consume(c, rbuf, (size_t)r, now_ns()) < 0) {
            conn_close(c, 1);
            return;
        }
        if ((size_t)r < sizeof rbuf) break;
    }
}

/* Sends what every connection touched in this wakeup owes: the server then sees the requests
 * of a whole wakeup together, as it would from many clients at once. */
static void flush_dirty(void) {
    for (int i = 0; i < ndirty; i++) {
        struct conn *c = dirty[i];
        c->dirty = 0;
        if (c->alive && conn_flush(c) < 0) {
            WARN("loadgen: write: %s\n", strerror(errno));
            conn_close(c, 1);
        }
    }
    ndirty = 0;
}

/* ---- setup ---- */

static void usage(FILE *f) {
    fprintf(f,
            "usage: loadgen --port PORT [options]\n"
            "  --host HOST             address to connect to (default 127.0.0.1)\n"
            "  --port PORT             port to connect to (required)\n"
            "  -c, --connections N     concurrent connections (default 10)\n"
            "  -s, --size BYTES        payload size of each request (default 64)\n"
            "  -d, --depth N           requests in flight per connection (default 1)\n"
            "  -t, --duration SECONDS  measured time (default 5)\n"
            "  -w, --warmup SECONDS    load before measuring, not recorded (default 1)\n"
            "  --settle SECONDS        first send one request per connection and discard all\n"
            "                          replies for this long (default 0: no settle phase)\n"
            "  --prefix TEXT           payload starts with TEXT, then 'x' up to --size\n"
            "  --payload-file PATH     payload is the file's bytes (--size is ignored)\n"
            "  --no-verify             do not check that each reply equals the request payload\n"
            "  --expect-after-prefix   check that each reply equals the payload after --prefix\n"
            "                          instead (what a server's /echo command sends back)\n"
            "  --max-frame BYTES       largest reply frame accepted (default 16 MiB)\n"
            "  --connect-timeout SEC   time allowed to connect, and then to make the TLS\n"
            "                          handshakes (default 3 each)\n"
            "  --tls                   speak TLS (a full handshake per connection, before the\n"
            "                          warmup; needs the build with -DLOADGEN_TLS)\n"
            "  --tls-ca PATH           verify the server's certificate against this PEM file\n"
            "                          (default: not verified)\n"
            "  --tls-server-name NAME  SNI, and the name verified with --tls-ca (default: --host)\n"
            "Prints one JSON line with requests/s, MB/s, latency percentiles and fairness.\n");
}

static void parse_args(int argc, char **argv) {
    enum {
        O_HOST = 256, O_PORT, O_SETTLE, O_PREFIX, O_FILE, O_NOVERIFY, O_AFTER, O_MAXF, O_CTO,
        O_TLS, O_TLS_CA, O_TLS_NAME
    };
    static const struct option longopts[] = {
        {"host", required_argument, NULL, O_HOST},
        {"port", required_argument, NULL, O_PORT},
        {"connections", required_argument, NULL, 'c'},
        {"size", required_argument, NULL, 's'},
        {"depth", required_argument, NULL, 'd'},
        {"duration", required_argument, NULL, 't'},
        {"warmup", required_argument, NULL, 'w'},
        {"settle", required_argument, NULL, O_SETTLE},
        {"prefix", required_argument, NULL, O_PREFIX},
        {"payload-file", required_argument, NULL, O_FILE},
        {"no-verify", no_argument, NULL, O_NOVERIFY},
        {"expect-after-prefix", no_argument, NULL, O_AFTER},
        {"max-frame", required_argument, NULL, O_MAXF},
        {"connect-timeout", required_argument, NULL, O_CTO},
        {"tls", no_argument, NULL, O_TLS},
        {"tls-ca", required_argument, NULL, O_TLS_CA},
        {"tls-server-name", required_argument, NULL, O_TLS_NAME},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    int ch;
    while ((ch = getopt_long(argc, argv, "c:s:d:t:w:h", longopts, NULL)) != -1) {
        switch (ch) {
        case O_HOST: opt.host = optarg; break;
        case O_PORT: parse_long(optarg, "port", 1, 65535); opt.port = optarg; break;
        case 'c': opt.connections = (int)parse_long(optarg, "connections", 1, 10000); break;
        case 's': opt.size = parse_long(optarg, "size", 0, 1L << 30); break;
        case 'd': opt.depth = (int)parse_long(optarg, "depth", 1, 4096); break;
        case 't': opt.duration = parse_double(optarg, "duration", MAX_SECONDS); break;
        case 'w': opt.warmup = parse_double(optarg, "warmup", MAX_SECONDS); break;
        case O_SETTLE: opt.settle = parse_double(optarg, "settle", MAX_SECONDS); break;
        case O_PREFIX: opt.prefix = optarg; break;
        case O_FILE: opt.payload_file = optarg; break;
        case O_NOVERIFY: opt.verify = 0; break;
        case O_AFTER: opt.after_prefix = 1; break;
        case O_MAXF: opt.max_frame = (uint32_t)parse_long(optarg, "max-frame", 0, 0xffffffffL); break;
        case O_CTO: opt.connect_timeout = parse_double(optarg, "connect-timeout", MAX_SECONDS); break;
        case O_TLS: opt.tls = 1; break;
        case O_TLS_CA: opt.tls_ca = optarg; break;
        case O_TLS_NAME: opt.tls_server_name = optarg; break;
        case 'h': usage(stdout); exit(0);
        default: usage(stderr); exit(2);
        }
    }
    if (optind != argc || opt.port == NULL) {
        usage(stderr);
        exit(2);
    }
    if (opt.after_prefix && (opt.prefix == NULL || opt.payload_file != NULL)) {
        fprintf(stderr, "loadgen: --expect-after-prefix needs --prefix (and no --payload-file)\n");
        exit(2);
    }
    if (opt.duration <= 0) {
        fprintf(stderr, "loadgen: --duration must be positive\n");
        exit(2);
    }
    if ((opt.tls_ca || opt.tls_server_name) && !opt.tls) {
        fprintf(stderr, "loadgen: --tls-ca and --tls-server-name need --tls\n");
        exit(2);
    }
#ifndef LOADGEN_TLS
    if (opt.tls) {
        fprintf(stderr, "loadgen: built without TLS; use .build/loadgen-tls (make loadgen-tls)\n");
        exit(2);
    }
#endif
}

static void build_payload(void) {
    size_t len;
    if (opt.payload_file) {
        FILE *f = fopen(opt.payload_file, "rb");
        if (!f) {
            fprintf(stderr, "loadgen: %s: %s\n", opt.payload_file, strerror(errno));
            exit(2);
        }
        size_t cap = 4096;
        len = 0;
        payload = malloc(cap);
        size_t r;
        while (payload && (r = fread(payload + len, 1, cap - len, f)) > 0) {
            len += r;
            if (len == cap) {
                if (cap >= (1u << 30)) break;
                cap *= 2;
                payload = realloc(payload, cap);
            }
        }
        fclose(f);
        if (!payload) exit(2);
    } else {
        len = (size_t)opt.size;
        size_t plen = opt.prefix ? strlen(opt.prefix) : 0;
        if (plen > len) len = plen;
        payload = malloc(len ? len : 1);
        if (!payload) exit(2);
        memset(payload, 'x', len);
        if (plen) memcpy(payload, opt.prefix, plen);
    }
    if (len > 0xffffffffu) exit(2);
    payload_len = (uint32_t)len;
    size_t skip = opt.after_prefix ? strlen(opt.prefix) : 0;
    expected = payload + skip;
    expected_len = (uint32_t)(len - skip);
    frame_len = 4 + len;
    frame = malloc(frame_len);
    if (!frame) exit(2);
    frame[0] = (uint8_t)(len >> 24);
    frame[1] = (uint8_t)(len >> 16);
    frame[2] = (uint8_t)(len >> 8);
    frame[3] = (uint8_t)len;
    memcpy(frame + 4, payload, len);
}

/* ---- output ---- */

static void print_result(struct conn *conns, double seconds, int alive, const char *error) {
    uint64_t cmin = UINT64_MAX, cmax = 0;
    for (int i = 0; i < opt.connections; i++) {
        if (!conns[i].connected) continue;
        if (conns[i].replies < cmin) cmin = conns[i].replies;
        if (conns[i].replies > cmax) cmax = conns[i].replies;
    }
    if (cmin == UINT64_MAX) cmin = 0;
    double rps = seconds > 0 ? (double)replies_total / seconds : 0.0;
    double mbs = seconds > 0 ? (double)reply_bytes / seconds / 1e6 : 0.0;
    printf("{\"ok\": %s, ", error ? "false" : "true");
    if (error) printf("\"error\": \"%s\", ", error);
    printf("\"requests\": %llu, \"seconds\": %.6f, \"rps\": %.1f, \"mb_s\": %.3f, ",
           (unsigned long long)replies_total, seconds, rps, mbs);
    print_latency_json();
    printf("\"errors\": %llu, \"connect_failures\": %llu, \"conn_errors\": %llu, "
           "\"mismatches\": %llu, \"unexpected_frames\": %llu, \"discarded_frames\": %llu, ",
           (unsigned long long)(connect_failures + conn_errors + mismatches),
           (unsigned long long)connect_failures, (unsigned long long)conn_errors,
           (unsigned long long)mismatches, (unsigned long long)unexpected,
           (unsigned long long)discarded);
    printf("\"connections\": %d, \"alive\": %d, \"per_conn_min\": %llu, \"per_conn_max\": %llu, ",
           opt.connections, alive, (unsigned long long)cmin, (unsigned long long)cmax);
#ifdef LOADGEN_TLS
    if (opt.tls) printf("\"tls_version\": \"%s\", \"tls_cipher\": \"%s\", ", tls_version, tls_cipher);
#endif
    printf("\"tls\": %s, \"cpu\": %.3f, ", opt.tls ? "true" : "false", cpu_share);
    printf("\"size\": %u, \"depth\": %d, \"duration\": %.3f, \"warmup\": %.3f}\n", payload_len,
           opt.depth, opt.duration, opt.warmup);
    fflush(stdout);
}

/* ---- main ---- */

static int connect_all(struct conn *conns, const struct addrinfo *ai) {
    for (int i = 0; i < opt.connections; i++) {
        struct conn *c = &conns[i];
        c->fd = socket(ai->ai_family, ai->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC,
                       ai->ai_protocol);
        if (c->fd < 0) {
            WARN("loadgen: socket: %s\n", strerror(errno));
            connect_failures++;
            continue;
        }
        int one = 1;
        setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        if (connect(c->fd, ai->ai_addr, ai->ai_addrlen) < 0 && errno != EINPROGRESS) {
            WARN("loadgen: connect: %s\n", strerror(errno));
            close(c->fd);
            connect_failures++;
            continue;
        }
        struct epoll_event ev = {.events = EPOLLOUT, .data.ptr = c};
        epoll_ctl(epfd, EPOLL_CTL_ADD, c->fd, &ev);
        c->alive = 1;
        c->want_out = 1;
    }
    int waiting = 0;
    for (int i = 0; i < opt.connections; i++) waiting += conns[i].alive;
    uint64_t deadline = now_ns() + (uint64_t)(opt.connect_timeout * 1e9);
    struct epoll_event evs[MAX_EVENTS];
    while (waiting > 0) {
        uint64_t t = now_ns();
        if (t >= deadline) break;
        int n = epoll_wait(epfd, evs, MAX_EVENTS, (int)((deadline - t) / 1000000 + 1));
        if (n < 0 && errno != EINTR) break;
        for (int i = 0; i < n; i++) {
            struct conn *c = evs[i].data.ptr;
            if (c->connected || !c->alive) continue;
            int err = 0;
            socklen_t len = sizeof err;
            getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len);
            waiting--;
            if (err) {
                WARN("loadgen: connect: %s\n", strerror(err));
                conn_close(c, 0);
                connect_failures++;
                continue;
            }
            c->connected = 1;
            conn_set_out(c, 0);
        }
    }
    int ok = 0;
    for (int i = 0; i < opt.connections; i++) {
        struct conn *c = &conns[i];
        if (c->alive && !c->connected) { /* timed out */
            conn_close(c, 0);
            connect_failures++;
        }
        ok += c->connected;
    }
    return ok;
}

#ifdef LOADGEN_TLS
static void tls_init(void) {
    tls_ctx = SSL_CTX_new(TLS_client_method());
    if (!tls_ctx) {
        fprintf(stderr, "loadgen: SSL_CTX_new failed\n");
        exit(2);
    }
    SSL_CTX_set_min_proto_version(tls_ctx, TLS1_2_VERSION);
    /* Every connection pays a full handshake: nothing is cached or resumed. */
    SSL_CTX_set_session_cache_mode(tls_ctx, SSL_SESS_CACHE_OFF);
    SSL_CTX_set_options(tls_ctx, SSL_OP_NO_TICKET);
    SSL_CTX_set_mode(tls_ctx, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
    SSL_CTX_set_read_ahead(tls_ctx, 1);
    SSL_CTX_set_default_read_buffer_len(tls_ctx, 64 * 1024);
    if (opt.tls_ca) {
        if (SSL_CTX_load_verify_locations(tls_ctx, opt.tls_ca, NULL) != 1) {
            fprintf(stderr, "loadgen: cannot load --tls-ca %s\n", opt.tls_ca);
            exit(2);
        }
        SSL_CTX_set_verify(tls_ctx, SSL_VERIFY_PEER, NULL);
    } else {
        SSL_CTX_set_verify(tls_ctx, SSL_VERIFY_NONE, NULL);
    }
    /* Identical frames side by side: the owed frames of a connection, from any offset into
     * the first one, are one contiguous range (at most 1 MiB, at least one frame). */
    frames_count = (uint64_t)(1u << 20) / frame_len;
    if (frames_count < 1) frames_count = 1;
    if (frames_count > (uint64_t)opt.depth) frames_count = (uint64_t)opt.depth;
    frames = malloc((size_t)frames_count * frame_len);
    if (!frames) exit(2);
    for (uint64_t k = 0; k < frames_count; k++) memcpy(frames + k * frame_len, frame, frame_len);
}

/* One step of a connection's handshake; returns 1 when done, 0 to wait, -1 on failure. */
static int tls_step(struct conn *c) {
    ERR_clear_error();
    int r = SSL_connect(c->ssl);
    if (r == 1) {
        c->handshaken = 1;
        conn_set_out(c, 0);
        if (!tls_version[0]) {
            snprintf(tls_version, sizeof tls_version, "%s", SSL_get_version(c->ssl));
            snprintf(tls_cipher, sizeof tls_cipher, "%s", SSL_get_cipher_name(c->ssl));
        }
        return 1;
    }
    int e = SSL_get_error(c->ssl, r);
    if (e == SSL_ERROR_WANT_READ) {
        conn_set_out(c, 0);
        return 0;
    }
    if (e == SSL_ERROR_WANT_WRITE) {
        conn_set_out(c, 1);
        return 0;
    }
    if (e == SSL_ERROR_SSL && SSL_get_verify_result(c->ssl) != X509_V_OK) {
        WARN("loadgen: TLS handshake: certificate verification failed: %s\n",
             X509_verify_cert_error_string(SSL_get_verify_result(c->ssl)));
        ERR_clear_error();
    } else {
        tls_warn("TLS handshake", e);
    }
    return -1;
}

/* Makes every connected socket's TLS handshake, all at once, within --connect-timeout.
 * Returns how many connections completed it; the others are closed and counted as failed
 * connects. */
static int tls_handshake_all(struct conn *conns) {
    const char *name = opt.tls_server_name ? opt.tls_server_name : opt.host;
    int waiting = 0;
    for (int i = 0; i < opt.connections; i++) {
        struct conn *c = &conns[i];
        if (!c->alive) continue;
        c->ssl = SSL_new(tls_ctx);
        if (!c->ssl || SSL_set_fd(c->ssl, c->fd) != 1) {
            fprintf(stderr, "loadgen: SSL_new failed\n");
            exit(2);
        }
        struct in6_addr a6;
        struct in_addr a4;
        int is_ip = inet_pton(AF_INET, name, &a4) == 1 || inet_pton(AF_INET6, name, &a6) == 1;
        if (!is_ip) SSL_set_tlsext_host_name(c->ssl, name); /* SNI carries names only */
        if (opt.tls_ca && SSL_set1_host(c->ssl, name) != 1) {
            fprintf(stderr, "loadgen: bad --tls-server-name %s\n", name);
            exit(2);
        }
        int r = tls_step(c);
        if (r < 0) {
            conn_close(c, 0);
            connect_failures++;
            c->connected = 0;
        } else if (r == 0) {
            waiting++;
        }
    }
    uint64_t deadline = now_ns() + (uint64_t)(opt.connect_timeout * 1e9);
    struct epoll_event evs[MAX_EVENTS];
    while (waiting > 0) {
        uint64_t t = now_ns();
        if (t >= deadline) break;
        int n = epoll_wait(epfd, evs, MAX_EVENTS, (int)((deadline - t) / 1000000 + 1));
        if (n < 0 && errno != EINTR) break;
        for (int i = 0; i < n; i++) {
            struct conn *c = evs[i].data.ptr;
            if (!c->alive || c->handshaken) continue;
            int r = tls_step(c);
            if (r != 0) waiting--;
            if (r < 0) {
                conn_close(c, 0);
                connect_failures++;
                c->connected = 0;
            }
        }
    }
    int ok = 0;
    for (int i = 0; i < opt.connections; i++) {
        struct conn *c = &conns[i];
        if (c->alive && !c->handshaken) { /* timed out */
            WARN("loadgen: TLS handshake timed out\n");
            conn_close(c, 0);
            connect_failures++;
            c->connected = 0;
        }
        ok += c->alive;
    }
    return ok;
}
#endif

static void start_phase_load(struct conn *conns, uint64_t t) {
    for (int i = 0; i < opt.connections; i++) {
        struct conn *c = &conns[i];
        if (!c->alive) continue;
        /* Requests still in flight from the settle phase are forgotten; their replies, if
         * they come later, show up as unexpected frames. */
        c->fifo_head = c->fifo_count = 0;
        for (int k = 0; k < opt.depth; k++) queue_request(c, t);
    }
    flush_dirty();
}

int main(int argc, char **argv) {
    parse_args(argc, argv);
    build_payload();
    signal(SIGPIPE, SIG_IGN);
    signal(SIGALRM, on_alarm);
    /* The connect timeout twice: once to connect, once for the TLS handshakes. */
    alarm((unsigned)ceil(2 * opt.connect_timeout + opt.settle + opt.warmup + opt.duration) + 5);

    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM};
    struct addrinfo *ai;
    int gai = getaddrinfo(opt.host, opt.port, &hints, &ai);
    if (gai != 0) {
        fprintf(stderr, "loadgen: %s: %s\n", opt.host, gai_strerror(gai));
        return 2;
    }
    epfd = epoll_create1(EPOLL_CLOEXEC);
    struct conn *conns = calloc((size_t)opt.connections, sizeof *conns);
    dirty = calloc((size_t)opt.connections, sizeof *dirty);
    if (!conns || !dirty || epfd < 0) return 2;
    for (int i = 0; i < opt.connections; i++) {
        conns[i].fifo_cap = (uint32_t)opt.depth + 1;
        conns[i].fifo = calloc(conns[i].fifo_cap, sizeof(uint64_t));
        if (!conns[i].fifo) return 2;
    }
    int connected = connect_all(conns, ai);
    freeaddrinfo(ai);
#ifdef LOADGEN_TLS
    if (opt.tls && connected > 0) {
        tls_init();
        connected = tls_handshake_all(conns);
        if (connected == 0) {
            print_result(conns, 0.0, 0, "no TLS handshake succeeded");
            return 3;
        }
    }
#endif
    if (connected == 0) {
        print_result(conns, 0.0, 0, "no connection could be made");
        return 3;
    }

    uint64_t t0 = now_ns();
    uint64_t settle_end = t0 + (uint64_t)(opt.settle * 1e9);
    uint64_t warm_end = settle_end + (uint64_t)(opt.warmup * 1e9);
    uint64_t end = warm_end + (uint64_t)(opt.duration * 1e9);
    uint64_t measure_start = warm_end, measure_end = end;
    double cpu_start = 0.0;
    if (opt.settle > 0) {
        phase = PH_SETTLE;
        for (int i = 0; i < opt.connections; i++) {
            struct conn *c = &conns[i];
            if (!c->alive) continue;
            c->pending = 1;
            if (conn_flush(c) < 0) conn_close(c, 1);
        }
    } else {
        phase = PH_WARMUP;
        start_phase_load(conns, t0);
    }

    const char *error = NULL;
    struct epoll_event evs[MAX_EVENTS];
    for (;;) {
        uint64_t t = now_ns();
        if (phase == PH_SETTLE && t >= settle_end) {
            phase = PH_WARMUP;
            start_phase_load(conns, t);
        }
        if (phase == PH_WARMUP && t >= warm_end) {
            phase = PH_MEASURE;
            measure_start = t;
            cpu_start = cpu_seconds();
        }
        if (phase == PH_MEASURE && t >= end) {
            measure_end = t;
            break;
        }
        int alive = 0;
        for (int i = 0; i < opt.connections && !alive; i++) alive = conns[i].alive;
        if (!alive) {
            measure_end = t;
            error = "every connection was closed or failed before the end";
            break;
        }
        uint64_t next = phase == PH_SETTLE ? settle_end : phase == PH_WARMUP ? warm_end : end;
        int timeout_ms = (int)((next - t + 999999) / 1000000);
        int n = epoll_wait(epfd, evs, MAX_EVENTS, timeout_ms);
        if (n < 0) {
            if (errno == EINTR) continue;
            fprintf(stderr, "loadgen: epoll_wait: %s\n", strerror(errno));
            break;
        }
        for (int i = 0; i < n; i++) {
            struct conn *c = evs[i].data.ptr;
            if (!c->alive) continue;
            if (evs[i].events & (EPOLLIN | EPOLLERR | EPOLLHUP)) conn_readable(c);
            else if (evs[i].events & EPOLLOUT) {
#ifdef LOADGEN_TLS
                if (c->read_wants_write) {
                    conn_readable(c);
                    if (!c->alive) continue;
                }
#endif
                if (conn_flush(c) < 0) conn_close(c, 1);
            }
        }
        flush_dirty();
    }
    int alive = 0;
    for (int i = 0; i < opt.connections; i++) alive += conns[i].alive;
    double seconds = measure_end > measure_start ? (double)(measure_end - measure_start) / 1e9 : 0;
    if (phase == PH_MEASURE && seconds > 0) cpu_share = (cpu_seconds() - cpu_start) / seconds;
    phase = PH_DONE;
    if (!error && seconds <= 0) error = "no measurement";
    print_result(conns, seconds, alive, error);
    for (int i = 0; i < opt.connections; i++) conn_close(&conns[i], 0);
    return 0;
}
