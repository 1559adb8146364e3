/*
 * fanout: a single-threaded epoll client that measures one-to-many delivery (fan-out).
 *
 * N receivers sit in one room (the chat's `general`, or a Redis pub/sub channel) and S senders
 * publish to it at a fixed total rate for a fixed time.  Every message carries its sender, a
 * per-sender sequence number and the CLOCK_MONOTONIC time at which it was queued for sending:
 *
 *     fanout SENDER SEQ t=SECONDS.NANOSECONDS xxx...
 *
 * Each receiver checks that it gets every message of every sender in order (a skipped sequence
 * number is a lost delivery, and so is every message a receiver never got by the end of the
 * drain), and each delivery's latency is the receive time minus the embedded send time: one
 * process, one clock.
 *
 * Protocols (--protocol):
 *   chat   enlace's chat server.  A client sends "\n" (its first byte makes it a line client and
 *          puts it in `general`); it is ready once the welcome notice ("* welcome...") arrives.
 *          A sender writes the message as a line; every member receives "[general] NICK: TEXT".
 *          Other lines starting with "* " are notices (joins) and are ignored.
 *   redis  Redis pub/sub.  A receiver sends "SUBSCRIBE CHANNEL" and is ready on the
 *          subscription's reply; a sender sends "PUBLISH CHANNEL TEXT" as a RESP array.
 *
 * Phases, every one bounded in time: setup (connect at most --connect-batch clients at a time,
 * each one waiting for its ready line; then a barrier: sender 0 publishes "fanout-sync" and
 * every receiver must see it, so everything the server queued before it, join notices
 * included, has been delivered), send (--rate messages/s over the senders, round robin, until
 * --count messages or --duration seconds), drain (until every receiver has every message, or
 * --drain-timeout).  A hard alarm ends the process a few seconds after the last deadline.
 *
 * Output: one JSON line on stdout (see print_result).  Diagnostics go to stderr.
 * Exit status: 0 when the run happened (even with losses counted in the JSON), 2 on bad usage,
 * 3 when the setup failed (the JSON says why), 4 when the alarm fired.
 */
#define _GNU_SOURCE
#include <errno.h>
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
#include <sys/timerfd.h>
#include <sys/types.h>
#include <time.h>
#include <unistd.h>

#define PROG "fanout"
#include "common.h" /* shared with loadgen.c: clocks, histogram, number parsers, WARN */

#define READ_BUF_SIZE (256 * 1024)
#define LINE_CAP (64 * 1024) /* longest line kept across reads */
#define MAX_EVENTS 1024
#define MAX_OPTION_VALUE 1e7 /* the largest rate or time an option accepts */

enum proto { P_CHAT, P_REDIS };
enum state { S_IDLE, S_CONNECTING, S_HELLO, S_READY, S_CLOSED };
enum phase { PH_SETUP, PH_BARRIER, PH_SEND, PH_DRAIN, PH_DONE };

struct conn {
    int fd;
    int sender; /* sender number, or -1 for a receiver */
    enum state state;
    int want_out;
    int synced;     /* saw the barrier message */
    int counted;    /* was ready when the sending started: its deliveries are expected */
    char *part;     /* an incomplete line kept from the previous read */
    uint32_t plen;
    uint64_t *last; /* receivers: the highest sequence number seen per sender */
    uint64_t delivered;
    char *out; /* senders: bytes queued for sending */
    size_t olen, ooff, ocap;
};

static struct {
    const char *host, *port, *channel;
    enum proto proto;
    int receivers, senders, batch;
    double rate, duration, setup_timeout, drain_timeout;
    long count, size;
    int watch_pid;
} opt = {"127.0.0.1", NULL, "general", P_CHAT, 1000, 4, 64, 1000.0, 5.0, 60.0, 10.0, -1, 64, 0};

static struct conn *conns;
static int nconns;
static int epfd, tfd;
static enum phase phase = PH_SETUP;
static char rbuf[READ_BUF_SIZE + LINE_CAP];
static uint64_t deliveries, gaps, reordered, unexpected, notices, bad_sender;
static uint64_t conn_errors, connect_failures, closed_receivers;
static uint64_t *sent_by; /* messages queued per sender */
static uint64_t sent_total, count_total;
static uint64_t t_send_start, t_send_end, t_last_delivery;
static int opened, pending, ready_receivers, ready_senders, synced;
static int warnings_left = 8;

/* ---- CPU accounting ---- */

/* CPU seconds used by a process and all its threads so far, or -1. */
static double pid_cpu_seconds(int pid) {
    if (pid <= 0) return -1;
    char path[64], buf[4096];
    snprintf(path, sizeof path, "/proc/%d/stat", pid);
    FILE *f = fopen(path, "r");
    if (!f) return -1;
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = '\0';
    char *p = strrchr(buf, ')');
    if (!p) return -1;
    unsigned long long utime = 0, stime = 0;
    /* after ")": state(3) ... utime(14) stime(15) */
    if (sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu", &utime,
               &stime) != 2)
        return -1;
    return (double)(utime + stime) / (double)sysconf(_SC_CLK_TCK);
}

/* ---- connections ---- */

static void conn_events(struct conn *c, int out) {
    struct epoll_event ev = {.events = EPOLLIN | (out ? EPOLLOUT : 0), .data.ptr = c};
    if (epoll_ctl(epfd, EPOLL_CTL_MOD, c->fd, &ev) == 0) c->want_out = out;
}

static void conn_close(struct conn *c, const char *why) {
    if (c->state == S_CLOSED || c->state == S_IDLE) return;
    if (c->state == S_CONNECTING || c->state == S_HELLO) pending--;
    if (c->state == S_READY && c->sender < 0) ready_receivers--;
    if (c->state == S_READY && c->sender >= 0) ready_senders--;
    if (why) {
        WARN("fanout: %s %d: %s\n", c->sender < 0 ? "receiver" : "sender",
             c->sender < 0 ? (int)(c - conns) : c->sender, why);
        if (c->state == S_CONNECTING) connect_failures++;
        else conn_errors++;
        if (c->sender < 0 && c->counted) closed_receivers++;
    }
    epoll_ctl(epfd, EPOLL_CTL_DEL, c->fd, NULL);
    close(c->fd);
    c->state = S_CLOSED;
}

static int out_append(struct conn *c, const char *data, size_t len) {
    if (c->olen + len > c->ocap) {
        if (c->ooff > 0) { /* compact first */
            memmove(c->out, c->out + c->ooff, c->olen - c->ooff);
            c->olen -= c->ooff;
            c->ooff = 0;
        }
        if (c->olen + len > c->ocap) {
            size_t cap = c->ocap ? c->ocap : 4096;
            while (cap < c->olen + len) cap *= 2;
            char *p = realloc(c->out, cap);
            if (!p) return -1;
            c->out = p;
            c->ocap = cap;
        }
    }
    memcpy(c->out + c->olen, data, len);
    c->olen += len;
    return 0;
}

static void conn_flush(struct conn *c) {
    while (c->ooff < c->olen) {
        ssize_t w = write(c->fd, c->out + c->ooff, c->olen - c->ooff);
        if (w < 0) {
            if (errno == EINTR) continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK) {
                if (!c->want_out) conn_events(c, 1);
                return;
            }
            conn_close(c, strerror(errno));
            return;
        }
        c->ooff += (size_t)w;
    }
    c->ooff = c->olen = 0;
    if (c->want_out) conn_events(c, 0);
}

static void become_ready(struct conn *c) {
    c->state = S_READY;
    pending--;
    if (c->sender < 0) ready_receivers++;
    else ready_senders++;
}

static void on_connected(struct conn *c) {
    int err = 0;
    socklen_t len = sizeof err;
    getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len);
    if (err) {
        conn_close(c, strerror(err));
        return;
    }
    c->state = S_HELLO;
    conn_events(c, 0);
    if (opt.proto == P_CHAT) {
        out_append(c, "\n", 1); /* first byte: a line client; no reply to an empty line */
    } else if (c->sender < 0) {
        char cmd[300];
        int n = snprintf(cmd, sizeof cmd, "SUBSCRIBE %s\r\n", opt.channel);
        out_append(c, cmd, (size_t)n);
    } else {
        become_ready(c); /* a publisher needs no handshake */
    }
    conn_flush(c);
}

static void open_next(const struct addrinfo *ai) {
    struct conn *c = &conns[opened++];
    c->fd = socket(ai->ai_family, ai->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC,
                   ai->ai_protocol);
    if (c->fd < 0) {
        WARN("fanout: socket: %s\n", strerror(errno));
        connect_failures++;
        c->state = S_CLOSED;
        return;
    }
    int one = 1;
    setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    c->state = S_CONNECTING;
    pending++;
    if (connect(c->fd, ai->ai_addr, ai->ai_addrlen) < 0 && errno != EINPROGRESS) {
        WARN("fanout: connect: %s\n", strerror(errno));
        close(c->fd);
        pending--;
        connect_failures++;
        c->state = S_CLOSED;
        return;
    }
    struct epoll_event ev = {.events = EPOLLOUT, .data.ptr = c};
    epoll_ctl(epfd, EPOLL_CTL_ADD, c->fd, &ev);
    c->want_out = 1;
}

/* ---- received lines ---- */

static int starts(const char *s, size_t len, const char *prefix) {
    size_t n = strlen(prefix);
    return len >= n && memcmp(s, prefix, n) == 0;
}

static uint64_t parse_u64(const char **p, const char *end, int *ok) {
    uint64_t v = 0;
    const char *s = *p;
    if (s >= end || *s < '0' || *s > '9') *ok = 0;
    while (s < end && *s >= '0' && *s <= '9') v = v * 10 + (uint64_t)(*s++ - '0');
    *p = s;
    return v;
}

static void on_payload(struct conn *c, const char *s, size_t len, uint64_t t) {
    if (len == 11 && memcmp(s, "fanout-sync", 11) == 0) {
        if (!c->synced) {
            c->synced = 1;
            synced++;
        }
        return;
    }
    if (!starts(s, len, "fanout ")) {
        unexpected++;
        WARN("fanout: unexpected payload: %.*s\n", (int)(len < 120 ? len : 120), s);
        return;
    }
    const char *p = s + 7, *end = s + len;
    int ok = 1;
    uint64_t sender = parse_u64(&p, end, &ok);
    if (p < end && *p == ' ') p++;
    else ok = 0;
    uint64_t seq = parse_u64(&p, end, &ok);
    if (end - p >= 3 && memcmp(p, " t=", 3) == 0) p += 3;
    else ok = 0;
    uint64_t sec = parse_u64(&p, end, &ok);
    if (p < end && *p == '.') p++;
    else ok = 0;
    const char *frac = p;
    uint64_t nsec = parse_u64(&p, end, &ok);
    if (p - frac != 9) ok = 0;
    if (!ok || sender >= (uint64_t)opt.senders || seq == 0) {
        bad_sender++;
        WARN("fanout: malformed message: %.*s\n", (int)(len < 120 ? len : 120), s);
        return;
    }
    uint64_t last = c->last[sender];
    if (seq <= last) { /* a duplicate or out of order: not a delivery */
        reordered++;
        return;
    }
    if (seq > last + 1) gaps += seq - last - 1;
    c->last[sender] = seq;
    c->delivered++;
    deliveries++;
    t_last_delivery = t;
    uint64_t ts = sec * 1000000000ull + nsec;
    hist_record(t > ts ? t - ts : 0);
}

static void on_line(struct conn *c, const char *s, size_t len, uint64_t t) {
    if (len > 0 && s[len - 1] == '\r') len--;
    if (opt.proto == P_CHAT) {
        if (starts(s, len, "* ")) {
            if (c->state == S_HELLO && starts(s, len, "* welcome")) become_ready(c);
            else notices++;
            return;
        }
        if (c->sender >= 0) return; /* a sender also gets every message: not counted */
        if (starts(s, len, "[")) {
            const char *colon = memmem(s, len, ": ", 2);
            if (colon) {
                on_payload(c, colon + 2, len - (size_t)(colon + 2 - s), t);
                return;
            }
        }
        unexpected++;
        WARN("fanout: unexpected line: %.*s\n", (int)(len < 120 ? len : 120), s);
        return;
    }
    /* Redis: RESP lines; only a payload line starts with "fanout". */
    if (len > 0 && s[0] == '-') {
        unexpected++;
        WARN("fanout: redis error: %.*s\n", (int)(len < 120 ? len : 120), s);
        return;
    }
    if (c->sender >= 0) return; /* ":N" replies to PUBLISH */
    if (c->state == S_HELLO) {
        if (len > 0 && s[0] == ':') become_ready(c); /* the subscription count ends the reply */
        return;
    }
    if (starts(s, len, "fanout")) on_payload(c, s, len, t);
}

static void conn_readable(struct conn *c) {
    for (int i = 0; i < 4 && c->state != S_CLOSED; i++) { /* at most 1 MiB per wakeup */
        size_t pre = c->plen;
        if (pre) memcpy(rbuf, c->part, pre);
        ssize_t r = read(c->fd, rbuf + pre, READ_BUF_SIZE);
        if (r < 0) {
            if (errno == EINTR) continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK) return;
            conn_close(c, strerror(errno));
            return;
        }
        if (r == 0) {
            conn_close(c, "closed by the server");
            return;
        }
        uint64_t t = now_ns();
        if (c->sender >= 0 && c->state == S_READY) { /* senders discard what they receive */
            c->plen = 0;
            if ((size_t)r < READ_BUF_SIZE) return;
            continue;
        }
        char *p = rbuf, *end = rbuf + pre + (size_t)r;
        char *nl;
        while (p < end && (nl = memchr(p, '\n', (size_t)(end - p))) != NULL) {
            on_line(c, p, (size_t)(nl - p), t);
            p = nl + 1;
        }
        size_t left = (size_t)(end - p);
        if (left > LINE_CAP) {
            unexpected++;
            WARN("fanout: a line longer than %d bytes\n", LINE_CAP);
            left = 0;
        }
        if (left && !c->part) c->part = malloc(LINE_CAP);
        if (left && c->part) memcpy(c->part, p, left);
        c->plen = c->part ? (uint32_t)left : 0;
        if ((size_t)r < READ_BUF_SIZE) return;
    }
}

/* ---- sending ---- */

static void queue_message(struct conn *c, int sender, uint64_t seq, int sync) {
    char payload[16384 + 128];
    size_t plen;
    if (sync) {
        plen = (size_t)snprintf(payload, sizeof payload, "fanout-sync");
    } else {
        uint64_t t = now_ns();
        plen = (size_t)snprintf(payload, sizeof payload, "fanout %d %llu t=%llu.%09llu ", sender,
                                (unsigned long long)seq, (unsigned long long)(t / 1000000000ull),
                                (unsigned long long)(t % 1000000000ull));
        while (plen < (size_t)opt.size && plen < sizeof payload) payload[plen++] = 'x';
    }
    if (opt.proto == P_CHAT) {
        payload[plen++] = '\n';
        out_append(c, payload, plen);
    } else {
        char head[400];
        int n = snprintf(head, sizeof head, "*3\r\n$7\r\nPUBLISH\r\n$%zu\r\n%s\r\n$%zu\r\n",
                         strlen(opt.channel), opt.channel, plen);
        out_append(c, head, (size_t)n);
        payload[plen++] = '\r';
        payload[plen++] = '\n';
        out_append(c, payload, plen);
    }
}

/* Queues every message due by now (the schedule: message i at t_send_start + i / rate). */
static void send_due(uint64_t t) {
    double elapsed = (double)(t - t_send_start) / 1e9;
    uint64_t due = (uint64_t)(elapsed * opt.rate) + 1;
    if (due > count_total) due = count_total;
    if (due <= sent_total) return;
    while (sent_total < due) {
        int s = (int)(sent_total % (uint64_t)opt.senders);
        struct conn *c = &conns[opt.receivers + s];
        sent_total++;
        sent_by[s]++; /* counted even when its connection is gone: its receivers lose it */
        if (c->state == S_READY) queue_message(c, s, sent_by[s], 0);
    }
    for (int s = 0; s < opt.senders; s++) {
        struct conn *c = &conns[opt.receivers + s];
        if (c->state == S_READY && !c->want_out && c->olen > c->ooff) conn_flush(c);
    }
}

/* ---- output ---- */

static void json_string(const char *s) {
    putchar('"');
    for (; s && *s; s++) {
        if (*s == '"' || *s == '\\') putchar('\\');
        putchar((unsigned char)*s < 0x20 ? ' ' : *s);
    }
    putchar('"');
}

static void print_result(const char *error, double setup_s, double client_cpu, double server_cpu,
                         double drained_s) {
    uint64_t expected = 0, missing = 0, rmin = UINT64_MAX, rmax = 0;
    int counted = 0;
    for (int i = 0; i < opt.receivers; i++) {
        struct conn *c = &conns[i];
        if (!c->counted) continue;
        counted++;
        if (c->delivered < rmin) rmin = c->delivered;
        if (c->delivered > rmax) rmax = c->delivered;
        for (int s = 0; s < opt.senders; s++) {
            expected += sent_by[s];
            if (sent_by[s] > c->last[s]) missing += sent_by[s] - c->last[s];
        }
    }
    if (rmin == UINT64_MAX) rmin = 0;
    double send_s = t_send_end > t_send_start ? (double)(t_send_end - t_send_start) / 1e9 : 0;
    uint64_t last = t_last_delivery > t_send_start ? t_last_delivery : t_send_start;
    double seconds = (double)(last - t_send_start) / 1e9;
    printf("{\"ok\": %s, ", error ? "false" : "true");
    if (error) {
        printf("\"error\": ");
        json_string(error);
        printf(", ");
    }
    printf("\"protocol\": \"%s\", \"receivers\": %d, \"counted_receivers\": %d, \"senders\": %d, "
           "\"ready_senders\": %d, ",
           opt.proto == P_CHAT ? "chat" : "redis", opt.receivers, counted, opt.senders,
           ready_senders);
    printf("\"rate\": %.1f, \"count\": %llu, \"sent\": %llu, \"send_seconds\": %.6f, "
           "\"sent_per_s\": %.1f, ",
           opt.rate, (unsigned long long)count_total, (unsigned long long)sent_total, send_s,
           send_s > 0 ? (double)sent_total / send_s : 0.0);
    printf("\"expected\": %llu, \"deliveries\": %llu, \"lost\": %llu, \"gaps\": %llu, "
           "\"missing_at_end\": %llu, \"reordered\": %llu, ",
           (unsigned long long)expected, (unsigned long long)deliveries,
           (unsigned long long)(gaps + missing), (unsigned long long)gaps,
           (unsigned long long)missing, (unsigned long long)reordered);
    printf("\"seconds\": %.6f, \"delivered_per_s\": %.1f, \"drain_seconds\": %.3f, ", seconds,
           seconds > 0 ? (double)deliveries / seconds : 0.0, drained_s);
    print_latency_json();
    printf("\"per_receiver_min\": %llu, \"per_receiver_max\": %llu, ", (unsigned long long)rmin,
           (unsigned long long)rmax);
    printf("\"unexpected\": %llu, \"malformed\": %llu, \"notices\": %llu, \"conn_errors\": %llu, "
           "\"connect_failures\": %llu, \"closed_receivers\": %llu, ",
           (unsigned long long)unexpected, (unsigned long long)bad_sender,
           (unsigned long long)notices, (unsigned long long)conn_errors,
           (unsigned long long)connect_failures, (unsigned long long)closed_receivers);
    printf("\"setup_seconds\": %.3f, \"client_cpu\": %.3f, \"server_cpu\": %.3f, \"size\": %ld, "
           "\"duration\": %.3f}\n",
           setup_s, client_cpu, server_cpu, opt.size, opt.duration);
    fflush(stdout);
}

/* ---- setup ---- */

static void usage(FILE *f) {
    fprintf(f,
            "usage: fanout --port PORT [options]\n"
            "  --host HOST            address to connect to (default 127.0.0.1)\n"
            "  --port PORT            port to connect to (required)\n"
            "  --protocol P           chat (enlace's chat, default) or redis (pub/sub)\n"
            "  --channel NAME         Redis channel (default general; the chat uses general)\n"
            "  -n, --receivers N      receiving clients (default 1000)\n"
            "  -S, --senders N        sending clients (default 4)\n"
            "  -r, --rate R           messages per second, all senders together (default 1000)\n"
            "  -t, --duration SEC     longest sending time (default 5)\n"
            "  --count N              messages to send (default rate x duration)\n"
            "  -s, --size BYTES       message text size, padded with 'x' (default 64)\n"
            "  --connect-batch N      clients connecting or awaiting their welcome at once\n"
            "                         (default 64)\n"
            "  --setup-timeout SEC    connecting, greetings and the barrier (default 60)\n"
            "  --drain-timeout SEC    wait after the last send for the deliveries (default 10)\n"
            "  --watch-pid PID        report that process's CPU use while sending and draining\n"
            "Prints one JSON line: deliveries/s, latency percentiles, losses, CPU use.\n");
}

static void parse_args(int argc, char **argv) {
    enum { O_HOST = 256, O_PORT, O_PROTO, O_CHAN, O_COUNT, O_BATCH, O_SETUP, O_DRAIN, O_PID };
    static const struct option longopts[] = {
        {"host", required_argument, NULL, O_HOST},
        {"port", required_argument, NULL, O_PORT},
        {"protocol", required_argument, NULL, O_PROTO},
        {"channel", required_argument, NULL, O_CHAN},
        {"receivers", required_argument, NULL, 'n'},
        {"senders", required_argument, NULL, 'S'},
        {"rate", required_argument, NULL, 'r'},
        {"duration", required_argument, NULL, 't'},
        {"count", required_argument, NULL, O_COUNT},
        {"size", required_argument, NULL, 's'},
        {"connect-batch", required_argument, NULL, O_BATCH},
        {"setup-timeout", required_argument, NULL, O_SETUP},
        {"drain-timeout", required_argument, NULL, O_DRAIN},
        {"watch-pid", required_argument, NULL, O_PID},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    int ch;
    while ((ch = getopt_long(argc, argv, "n:S:r:t:s:h", longopts, NULL)) != -1) {
        switch (ch) {
        case O_HOST: opt.host = optarg; break;
        case O_PORT: parse_long(optarg, "port", 1, 65535); opt.port = optarg; break;
        case O_PROTO:
            if (strcmp(optarg, "chat") == 0) opt.proto = P_CHAT;
            else if (strcmp(optarg, "redis") == 0) opt.proto = P_REDIS;
            else {
                fprintf(stderr, "fanout: --protocol is chat or redis\n");
                exit(2);
            }
            break;
        case O_CHAN:
            if (strlen(optarg) == 0 || strlen(optarg) > 200 || strpbrk(optarg, " \r\n")) {
                fprintf(stderr, "fanout: bad --channel\n");
                exit(2);
            }
            opt.channel = optarg;
            break;
        case 'n': opt.receivers = (int)parse_long(optarg, "receivers", 1, 100000); break;
        case 'S': opt.senders = (int)parse_long(optarg, "senders", 1, 1000); break;
        case 'r': opt.rate = parse_double(optarg, "rate", MAX_OPTION_VALUE); break;
        case 't': opt.duration = parse_double(optarg, "duration", MAX_OPTION_VALUE); break;
        case O_COUNT: opt.count = parse_long(optarg, "count", 1, 100000000L); break;
        case 's': opt.size = parse_long(optarg, "size", 0, 16384); break;
        case O_BATCH: opt.batch = (int)parse_long(optarg, "connect-batch", 1, 100000); break;
        case O_SETUP: opt.setup_timeout = parse_double(optarg, "setup-timeout", MAX_OPTION_VALUE); break;
        case O_DRAIN: opt.drain_timeout = parse_double(optarg, "drain-timeout", MAX_OPTION_VALUE); break;
        case O_PID: opt.watch_pid = (int)parse_long(optarg, "watch-pid", 1, 1L << 30); break;
        case 'h': usage(stdout); exit(0);
        default: usage(stderr); exit(2);
        }
    }
    if (optind != argc || opt.port == NULL) {
        usage(stderr);
        exit(2);
    }
    if (opt.rate <= 0 || opt.duration <= 0) {
        fprintf(stderr, "fanout: --rate and --duration must be positive\n");
        exit(2);
    }
}

/* Raises the open-files limit to fit every connection; returns 0 when it fits. */
static int raise_nofile(long needed) {
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) != 0) return -1;
    if ((long)rl.rlim_cur >= needed) return 0;
    rlim_t want = (rlim_t)needed;
    if (rl.rlim_max != RLIM_INFINITY && rl.rlim_max < want) want = rl.rlim_max;
    rl.rlim_cur = want;
    if (setrlimit(RLIMIT_NOFILE, &rl) != 0) return -1;
    return (long)want >= needed ? 0 : -1;
}

int main(int argc, char **argv) {
    parse_args(argc, argv);
    double ideal = floor(opt.rate * opt.duration);
    count_total = opt.count > 0 ? (uint64_t)opt.count : (uint64_t)(ideal < 1 ? 1 : ideal);
    signal(SIGPIPE, SIG_IGN);
    signal(SIGALRM, on_alarm);
    alarm((unsigned)ceil(opt.setup_timeout + opt.duration + opt.drain_timeout) + 10);

    nconns = opt.receivers + opt.senders;
    if (raise_nofile((long)nconns + 64) != 0) {
        struct rlimit rl;
        getrlimit(RLIMIT_NOFILE, &rl);
        fprintf(stderr, "fanout: the open-files limit (%llu) is too low for %d connections\n",
                (unsigned long long)rl.rlim_cur, nconns);
        return 2;
    }
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM};
    struct addrinfo *ai;
    int gai = getaddrinfo(opt.host, opt.port, &hints, &ai);
    if (gai != 0) {
        fprintf(stderr, "fanout: %s: %s\n", opt.host, gai_strerror(gai));
        return 2;
    }
    epfd = epoll_create1(EPOLL_CLOEXEC);
    conns = calloc((size_t)nconns, sizeof *conns);
    sent_by = calloc((size_t)opt.senders, sizeof *sent_by);
    if (epfd < 0 || !conns || !sent_by) return 2;
    for (int i = 0; i < nconns; i++) {
        conns[i].fd = -1;
        conns[i].sender = i < opt.receivers ? -1 : i - opt.receivers;
        if (i < opt.receivers) {
            conns[i].last = calloc((size_t)opt.senders, sizeof(uint64_t));
            if (!conns[i].last) return 2;
        }
    }
    /* The send clock: a timer that wakes the loop at most every 100 us while sending. */
    tfd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
    if (tfd < 0) return 2;
    struct epoll_event tev = {.events = EPOLLIN, .data.ptr = NULL};
    epoll_ctl(epfd, EPOLL_CTL_ADD, tfd, &tev);

    uint64_t t0 = now_ns();
    uint64_t setup_end = t0 + (uint64_t)(opt.setup_timeout * 1e9);
    uint64_t send_deadline = 0, drain_deadline = 0, t_barrier = 0;
    double cpu0 = 0, server_cpu0 = -1, setup_s = 0;
    const char *error = NULL;
    struct epoll_event evs[MAX_EVENTS];
    for (;;) {
        uint64_t t = now_ns();
        if (phase == PH_SETUP) {
            while (opened < nconns && pending < opt.batch) open_next(ai);
            if (opened == nconns && pending == 0) {
                if (ready_receivers == 0 || ready_senders == 0) {
                    error = ready_receivers == 0 ? "no receiver got ready" : "no sender got ready";
                    break;
                }
                struct conn *s0 = NULL; /* the first sender still up sends the barrier */
                for (int s = 0; s < opt.senders && !s0; s++)
                    if (conns[opt.receivers + s].state == S_READY) s0 = &conns[opt.receivers + s];
                queue_message(s0, 0, 0, 1);
                conn_flush(s0);
                phase = PH_BARRIER;
                t_barrier = t;
            }
        }
        if (phase == PH_BARRIER && synced >= ready_receivers) {
            setup_s = (double)(t - t0) / 1e9;
            for (int i = 0; i < opt.receivers; i++) conns[i].counted = conns[i].state == S_READY;
            phase = PH_SEND;
            t_send_start = t;
            send_deadline = t + (uint64_t)(opt.duration * 1e9);
            cpu0 = cpu_seconds();
            server_cpu0 = pid_cpu_seconds(opt.watch_pid);
            uint64_t period = (uint64_t)(1e9 / opt.rate);
            if (period < 100000) period = 100000;
            struct itimerspec its = {
                .it_interval = {(time_t)(period / 1000000000ull), (long)(period % 1000000000ull)},
                .it_value = {0, 1},
            };
            timerfd_settime(tfd, 0, &its, NULL);
        }
        if ((phase == PH_SETUP || phase == PH_BARRIER) && t >= setup_end) {
            static char msg[200];
            snprintf(msg, sizeof msg,
                     "setup timed out after %.0f s: %d of %d receivers ready, %d of them synced, "
                     "%d of %d senders ready",
                     opt.setup_timeout, ready_receivers, opt.receivers, synced, ready_senders,
                     opt.senders);
            error = msg;
            break;
        }
        if (phase == PH_SEND) {
            if (t < send_deadline) send_due(t);
            if (sent_total >= count_total || t >= send_deadline) {
                t_send_end = t;
                phase = PH_DRAIN;
                drain_deadline = t + (uint64_t)(opt.drain_timeout * 1e9);
                struct itimerspec off = {{0, 0}, {0, 0}};
                timerfd_settime(tfd, 0, &off, NULL);
            }
        }
        if (phase == PH_DRAIN) {
            int flushed = 1, caught_up = 1;
            for (int s = 0; s < opt.senders; s++) {
                struct conn *c = &conns[opt.receivers + s];
                if (c->state == S_READY && c->olen > c->ooff) flushed = 0;
            }
            for (int i = 0; i < opt.receivers && caught_up; i++) {
                if (!conns[i].counted || conns[i].state != S_READY) continue;
                for (int s = 0; s < opt.senders; s++)
                    if (conns[i].last[s] < sent_by[s]) caught_up = 0;
            }
            if ((flushed && caught_up) || t >= drain_deadline) {
                phase = PH_DONE;
                break;
            }
        }
        uint64_t next = phase == PH_DRAIN ? drain_deadline
                        : phase == PH_SEND ? send_deadline
                                           : setup_end;
        int timeout_ms = next > t ? (int)((next - t + 999999) / 1000000) : 0;
        if (phase == PH_SETUP || phase == PH_DRAIN) /* re-check progress at least every 50 ms */
            timeout_ms = timeout_ms > 50 ? 50 : timeout_ms;
        int n = epoll_wait(epfd, evs, MAX_EVENTS, timeout_ms);
        if (n < 0) {
            if (errno == EINTR) continue;
            fprintf(stderr, "fanout: epoll_wait: %s\n", strerror(errno));
            error = "epoll_wait failed";
            break;
        }
        for (int i = 0; i < n; i++) {
            struct conn *c = evs[i].data.ptr;
            if (c == NULL) { /* the send timer */
                uint64_t expirations;
                ssize_t r = read(tfd, &expirations, sizeof expirations);
                (void)r;
                continue;
            }
            if (c->state == S_CLOSED) continue;
            if (c->state == S_CONNECTING) {
                if (evs[i].events & (EPOLLOUT | EPOLLERR | EPOLLHUP)) on_connected(c);
                continue;
            }
            if (evs[i].events & (EPOLLIN | EPOLLERR | EPOLLHUP)) conn_readable(c);
            if (c->state != S_CLOSED && (evs[i].events & EPOLLOUT)) conn_flush(c);
        }
    }
    freeaddrinfo(ai);
    uint64_t t_end = now_ns();
    double client_cpu = 0, server_cpu = -1, drained_s = 0;
    if (t_send_start) {
        double wall = (double)(t_end - t_send_start) / 1e9;
        if (wall > 0) {
            client_cpu = (cpu_seconds() - cpu0) / wall;
            double s1 = pid_cpu_seconds(opt.watch_pid);
            if (server_cpu0 >= 0 && s1 >= 0) server_cpu = (s1 - server_cpu0) / wall;
        }
        if (t_send_end) drained_s = (double)(t_end - t_send_end) / 1e9;
    } else if (t_barrier) {
        setup_s = (double)(t_end - t0) / 1e9;
    }
    print_result(error, setup_s, client_cpu, server_cpu, drained_s);
    for (int i = 0; i < nconns; i++) conn_close(&conns[i], NULL);
    return error && !t_send_start ? 3 : 0;
}
