/*
 * loadgen: an epoll WebSocket client that holds many subscriptions to one feed, or
 * (--feeds N) spread over N feeds named FEED-0..FEED-(N-1): connection i takes feed
 * i % N. A report's FIRST..LAST then holds for every feed alike, which is what the
 * harness publishes (the same count to each feed, round-robin).
 *
 * One thread, one epoll set, level-triggered. It opens --conns connections to
 * --host:--port, upgrades each to WebSocket on --path (optionally offering
 * permessage-deflate), subscribes (either through the path's ?feed= shortcut or
 * with a {"type":"subscribe"} message), and then counts every entry.created event:
 * per-connection seq order (gaps, duplicates), latency from the publisher's
 * timestamp to the moment the bytes were read, and its own CPU time.
 *
 * Latency source: the publisher puts its send time, Unix nanoseconds
 * (CLOCK_REALTIME), in the entry as  "meta": {"t": <ns>}.  The first "t" key of
 * the event is taken; the harness's entries have no other.
 *
 * Resuming (--since N, with --epoch E): every connection subscribes after seq N
 * (`?feed=F&since=N&epoch=E`, or the same fields in the subscribe message), as a
 * reader coming back does; its first event must then be N+1, and anything else
 * counts as a gap or a duplicate. With --until M, the moment each connection first
 * holds seq M is kept: a report gives the last of those moments, the time the whole
 * crowd was caught up.
 *
 * Source address (--source A): connections leave from A (any 127.x.y.z on loopback),
 * each such address with its own ~28,000 ephemeral ports: 100,000 connections to one
 * server port need several, and back-to-back connect bursts do not wait for the
 * previous burst's TIME_WAIT ports.
 *
 * Control: with --duration it runs by itself (connect, run, print, exit). Under the
 * harness (--control) it reads commands, one per line, on stdin:
 *   connect                       start connecting (so several processes start together)
 *   reset                         zero the counters, the histogram and the CPU baseline
 *   report FIRST LAST TIMEOUT_MS  once every connection has subscribed or failed and
 *                                 every subscribed one has seen seq LAST (or the
 *                                 timeout passed), print a report for seqs FIRST..LAST
 *   quit                          close everything, print the final report, exit
 * Every line it prints on stdout is one JSON object with an "event" field; logs go
 * to stderr. A hard deadline (--deadline, plus alarm()) bounds the run whatever
 * happens.
 *
 * Costs it accepts: the Sec-WebSocket-Key is fixed (the RFC's sample), so the
 * accept header is checked against a constant; a connection whose server accepted
 * deflate with context takeover keeps a 32 KiB inflate window (about 44 KiB with
 * zlib's state); with server_no_context_takeover all share one, reset per message.
 *
 * Build: gcc -O2 -o scripts/loadgen/bin/loadgen scripts/loadgen/loadgen.c -lz
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>
#include <zlib.h>

/* ---------------------------------------------------------------- options */

enum subscribe_mode { SUBSCRIBE_BY_PATH, SUBSCRIBE_BY_MESSAGE };

static struct {
    const char *host;
    int port;
    const char *path;
    const char *feed;
    int feeds; /* 0: every connection on --feed; N: on FEED-(i % N) */
    enum subscribe_mode mode;
    int conns;
    int concurrency; /* handshakes in flight at once */
    int deflate;
    double duration; /* standalone mode: seconds after all subscribed */
    double deadline; /* hard limit on the whole run, seconds */
    int control;     /* commands on stdin */
    const char *name;
    int has_since; /* --since given: each connection resumes after seq `since` */
    int64_t since;
    const char *epoch; /* with --since: the epoch that seq belongs to */
    int64_t until;     /* > 0: note when each connection first holds this seq */
    const char *source; /* local address to connect from, or NULL */
} opt = {
    .host = "127.0.0.1",
    .port = 8000,
    .path = NULL,
    .feed = "bench",
    .feeds = 0,
    .mode = SUBSCRIBE_BY_PATH,
    .conns = 100,
    .concurrency = 512,
    .deflate = 0,
    .duration = 10,
    .deadline = 600,
    .control = 0,
    .name = "loadgen",
    .has_since = 0,
    .since = 0,
    .epoch = NULL,
    .until = 0,
    .source = NULL,
};

static void logf_(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "[%s] ", opt.name);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
}

static void die(const char *what) {
    logf_("fatal: %s: %s", what, strerror(errno));
    exit(2);
}

static double now_mono(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

static int64_t now_real_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static double cpu_seconds(double *system) {
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    *system = ru.ru_stime.tv_sec + ru.ru_stime.tv_usec / 1e6;
    return ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6 + *system;
}

/* ------------------------------------------------------------- histogram */
/*
 * Log-linear histogram of microseconds: exact below 128 µs, then 128 buckets per
 * power of two (under 0.8 % error). The harness merges the buckets of several
 * processes, so it uses the same index formula (see bench.py bucket_value).
 */
#define HIST_SUB 128
#define HIST_BUCKETS (64 * HIST_SUB)

static uint64_t hist[HIST_BUCKETS];

static int hist_index(uint64_t us) {
    if (us < HIST_SUB) return (int)us;
    int e = 63 - __builtin_clzll(us); /* >= 7 */
    return (e - 6) * HIST_SUB + (int)(us >> (e - 7)) - HIST_SUB;
}

static double hist_value(int idx) { /* bucket midpoint, µs */
    if (idx < HIST_SUB) return idx;
    int e = idx / HIST_SUB + 6;
    uint64_t m = (uint64_t)(idx % HIST_SUB) + HIST_SUB;
    double low = (double)(m << (e - 7));
    return low + (double)((uint64_t)1 << (e - 7)) / 2.0;
}

/* ------------------------------------------------------------ connections */

enum conn_state { CONN_IDLE, CONN_CONNECTING, CONN_HANDSHAKE, CONN_OPEN, CONN_CLOSED };

struct conn {
    int fd;
    enum conn_state state;
    int subscribed;
    char *in; /* unparsed bytes from the socket */
    size_t in_len, in_cap;
    char *out; /* bytes the socket did not take yet */
    size_t out_len, out_cap;
    char *frag; /* a fragmented message being assembled */
    size_t frag_len, frag_cap;
    int frag_rsv1;
    int in_fragment;
    z_stream *inflater; /* set when the server accepted permessage-deflate */
    int inflater_shared; /* server_no_context_takeover: one stream, reset per message */
    int64_t last_seq;   /* 0 until the first event (--since N: N) */
    double caught_at;   /* --until: when it first held that seq, monotonic s */
    uint64_t unique;    /* in-order events since reset */
    int close_code;
};

static struct conn *conns;
static int epfd;

static int feed_of(const struct conn *c) {
    return opt.feeds ? (int)((c - conns) % opt.feeds) : 0;
}

/* Counters since the last reset (the report's window). */
static struct {
    uint64_t received; /* entry.created events */
    uint64_t dups;     /* seq <= last seq: duplicate or out of order */
    uint64_t gaps;     /* seqs skipped over: a hole in the order */
    uint64_t no_timestamp;
    uint64_t other_events; /* updated, deleted, pong, ... */
    uint64_t resets;
    uint64_t errors;
    uint64_t bytes;
    double max_us;
    double t0;
    double cpu0;
    double sys0;
} win;

/* Counters for the whole run. */
static struct {
    int opened; /* connect() issued */
    int open;   /* handshake done */
    int subscribed;
    int failed; /* refused, reset or bad handshake before subscribed */
    int closed; /* closed after subscribing */
    int deflate_accepted;
    double connect_start;
    double all_subscribed_at;
    int caught_up; /* --until: connections that have held that seq */
    uint64_t close_codes[5]; /* 1001, 1008, 1011, 1012, 1013/other */
} run;

static int next_to_open;
static int in_flight;

static char **handshake_reqs; /* one per feed (--feeds), or one */
static size_t *handshake_lens;
static char **feed_names;

/* The RFC 6455 sample key and its accept value. */
static const char WS_KEY[] = "dGhlIHNhbXBsZSBub25jZQ==";
static const char WS_ACCEPT[] = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";

static void grow(char **buf, size_t *cap, size_t need) {
    if (need <= *cap) return;
    size_t c = *cap ? *cap : 4096;
    while (c < need) c *= 2;
    char *p = realloc(*buf, c);
    if (!p) die("realloc");
    *buf = p;
    *cap = c;
}

static void watch(struct conn *c, uint32_t events, int op) {
    struct epoll_event ev = {.events = events, .data.u32 = (uint32_t)(c - conns)};
    if (epoll_ctl(epfd, op, c->fd, &ev) < 0) die("epoll_ctl");
}

static void check_all_settled(void);

static void conn_close(struct conn *c, int failed) {
    if (c->state == CONN_CLOSED || c->state == CONN_IDLE) return;
    if (c->state == CONN_CONNECTING || c->state == CONN_HANDSHAKE) in_flight--;
    if (!c->subscribed) {
        if (failed) run.failed++;
    } else {
        run.closed++;
        run.subscribed--;
    }
    if (c->state == CONN_OPEN) run.open--;
    close(c->fd);
    c->fd = -1;
    c->state = CONN_CLOSED;
    free(c->in);
    free(c->out);
    free(c->frag);
    c->in = c->out = c->frag = NULL;
    c->in_cap = c->out_cap = c->frag_cap = 0;
    if (c->inflater && !c->inflater_shared) {
        inflateEnd(c->inflater);
        free(c->inflater);
    }
    c->inflater = NULL;
    check_all_settled();
}

/* Queue bytes; write what the socket takes now, the rest on EPOLLOUT. */
static void conn_send(struct conn *c, const void *data, size_t len) {
    if (c->out_len == 0) {
        ssize_t n = send(c->fd, data, len, MSG_NOSIGNAL);
        if (n < 0 && errno != EAGAIN) {
            conn_close(c, 1);
            return;
        }
        if (n < 0) n = 0;
        data = (const char *)data + n;
        len -= (size_t)n;
        if (len == 0) return;
        watch(c, EPOLLIN | EPOLLOUT, EPOLL_CTL_MOD);
    }
    grow(&c->out, &c->out_cap, c->out_len + len);
    memcpy(c->out + c->out_len, data, len);
    c->out_len += len;
}

static void conn_flush(struct conn *c) {
    while (c->out_len) {
        ssize_t n = send(c->fd, c->out, c->out_len, MSG_NOSIGNAL);
        if (n < 0) {
            if (errno == EAGAIN) return;
            conn_close(c, 1);
            return;
        }
        memmove(c->out, c->out + n, c->out_len - (size_t)n);
        c->out_len -= (size_t)n;
    }
    watch(c, EPOLLIN, EPOLL_CTL_MOD);
}

/* A client frame: masked, as RFC 6455 requires (a zero mask keeps it cheap). */
static void send_frame(struct conn *c, int opcode, const char *payload, size_t len) {
    char hdr[14];
    size_t h = 0;
    hdr[h++] = (char)(0x80 | opcode);
    if (len < 126) {
        hdr[h++] = (char)(0x80 | len);
    } else {
        hdr[h++] = (char)(0x80 | 126);
        hdr[h++] = (char)(len >> 8);
        hdr[h++] = (char)(len & 0xff);
    }
    memset(hdr + h, 0, 4); /* mask key 0: payload XOR 0 is the payload */
    h += 4;
    char frame[256];
    if (h + len > sizeof frame) len = sizeof frame - h; /* control frames are <126 */
    memcpy(frame, hdr, h);
    memcpy(frame + h, payload, len);
    conn_send(c, frame, h + len);
}

static void open_more(void) {
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)opt.port)};
    if (inet_pton(AF_INET, opt.host, &sa.sin_addr) != 1) {
        logf_("bad --host %s (IPv4 address expected)", opt.host);
        exit(2);
    }
    struct sockaddr_in local = {.sin_family = AF_INET, .sin_port = 0};
    if (opt.source && inet_pton(AF_INET, opt.source, &local.sin_addr) != 1) {
        logf_("bad --source %s (IPv4 address expected)", opt.source);
        exit(2);
    }
    while (next_to_open < opt.conns && in_flight < opt.concurrency) {
        struct conn *c = &conns[next_to_open++];
        c->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        if (c->fd < 0) die("socket (raise the open-files limit or use more processes)");
        int one = 1;
        setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        if (opt.source) {
            /* The port is chosen at connect(), per destination, not at bind(). */
            setsockopt(c->fd, IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, &one, sizeof one);
            if (bind(c->fd, (struct sockaddr *)&local, sizeof local) < 0) die("bind --source");
        }
        c->last_seq = opt.has_since ? opt.since : 0;
        run.opened++;
        in_flight++;
        if (connect(c->fd, (struct sockaddr *)&sa, sizeof sa) < 0 && errno != EINPROGRESS) {
            c->state = CONN_CONNECTING;
            conn_close(c, 1);
            continue;
        }
        c->state = CONN_CONNECTING;
        watch(c, EPOLLOUT, EPOLL_CTL_ADD);
    }
}

/* ----------------------------------------------------------------- parsing */

/* Return a pointer to the value of the first "key": in buf (whitespace skipped). Every
 * key begins with a quote: hop from quote to quote (memchr) rather than memmem, whose
 * set-up per call cost more than the search in a storm's half a million messages. */
static const char *find_key(const char *buf, size_t len, const char *key, size_t key_len) {
    const char *end = buf + len;
    const char *p = buf;
    while ((size_t)(end - p) >= key_len) {
        const char *q = memchr(p, key[0], (size_t)(end - p) - key_len + 1);
        if (!q) return NULL;
        if (memcmp(q, key, key_len) != 0) {
            p = q + 1;
            continue;
        }
        const char *v = q + key_len;
        while (v < end && (*v == ' ' || *v == '\t' || *v == '\n' || *v == '\r')) v++;
        if (v < end && *v == ':') {
            v++;
            while (v < end && (*v == ' ' || *v == '\t' || *v == '\n' || *v == '\r')) v++;
            return v;
        }
        p = q + 1;
    }
    return NULL;
}

static int parse_int(const char *v, const char *end, int64_t *out) {
    int64_t x = 0;
    int digits = 0;
    while (v < end && *v >= '0' && *v <= '9') {
        x = x * 10 + (*v - '0');
        v++;
        digits++;
    }
    *out = x;
    return digits > 0;
}

static int type_is(const char *v, const char *end, const char *type) {
    size_t n = strlen(type);
    return v && end - v >= (ptrdiff_t)(n + 2) && v[0] == '"' && memcmp(v + 1, type, n) == 0 &&
           v[n + 1] == '"';
}

/* Once every connection subscribed or failed, say so (once): the connect time. */
static void check_all_settled(void) {
    if (run.subscribed + run.failed + run.closed == opt.conns && run.all_subscribed_at == 0) {
        run.all_subscribed_at = now_mono();
        printf("{\"event\":\"subscribed\",\"name\":\"%s\",\"conns\":%d,\"subscribed\":%d,"
               "\"failed\":%d,\"deflate_accepted\":%d,\"connect_start\":%.6f,"
               "\"all_subscribed_at\":%.6f,\"connect_seconds\":%.6f}\n",
               opt.name, opt.conns, run.subscribed, run.failed, run.deflate_accepted,
               run.connect_start, run.all_subscribed_at,
               run.all_subscribed_at - run.connect_start);
        fflush(stdout);
    }
}

static void on_subscribed(struct conn *c) {
    if (c->subscribed) return;
    c->subscribed = 1;
    run.subscribed++;
    check_all_settled();
}

/* What on_text reads of a message: parsed once per distinct compressed message (the
 * memo below keeps it), accounted for each connection that receives it. */
enum kind { KIND_ENTRY, KIND_SUBSCRIBED, KIND_RESET, KIND_ERROR, KIND_OTHER };
struct parsed {
    enum kind kind;
    int has_seq, has_t;
    int64_t seq, t;
};

static void parse_text(const char *msg, size_t len, struct parsed *out) {
    const char *end = msg + len;
    const char *type = find_key(msg, len, "\"type\"", 6);
    memset(out, 0, sizeof *out);
    if (type_is(type, end, "entry.created")) {
        out->kind = KIND_ENTRY;
        const char *s = find_key(msg, len, "\"seq\"", 5);
        out->has_seq = s && parse_int(s, end, &out->seq);
        const char *tv = find_key(msg, len, "\"t\"", 3);
        out->has_t = tv && parse_int(tv, end, &out->t);
    } else if (type_is(type, end, "subscribed")) {
        out->kind = KIND_SUBSCRIBED;
    } else if (type_is(type, end, "reset")) {
        out->kind = KIND_RESET;
    } else if (type_is(type, end, "error")) {
        out->kind = KIND_ERROR;
    } else {
        out->kind = KIND_OTHER;
    }
}

static void account(struct conn *c, const struct parsed *m, const char *msg, size_t len,
                    int64_t read_ns) {
    switch (m->kind) {
        case KIND_ENTRY:
            win.received++;
            if (m->has_seq) {
                int64_t seq = m->seq;
                if ((c->last_seq == 0 && !opt.has_since) || seq == c->last_seq + 1) {
                    c->unique++;
                    c->last_seq = seq;
                } else if (seq <= c->last_seq) {
                    win.dups++;
                } else {
                    win.gaps += (uint64_t)(seq - c->last_seq - 1);
                    c->unique++;
                    c->last_seq = seq;
                }
                if (opt.until && !c->caught_at && c->last_seq >= opt.until) {
                    c->caught_at = now_mono();
                    run.caught_up++;
                }
            }
            if (m->has_t) {
                double us = (double)(read_ns - m->t) / 1000.0;
                if (us < 0) us = 0;
                hist[hist_index((uint64_t)us)]++;
                if (us > win.max_us) win.max_us = us;
            } else {
                win.no_timestamp++;
            }
            break;
        case KIND_SUBSCRIBED: on_subscribed(c); break;
        case KIND_RESET: win.resets++; break;
        case KIND_ERROR:
            win.errors++;
            if (win.errors <= 3)
                logf_("server error message: %.*s", (int)(len > 300 ? 300 : len), msg);
            break;
        default: win.other_events++; break;
    }
}

static void on_text(struct conn *c, const char *msg, size_t len, int64_t read_ns) {
    struct parsed m;
    parse_text(msg, len, &m);
    account(c, &m, msg, len, read_ns);
}

static char *inflate_buf;
static size_t inflate_cap;

/* Inflate one permessage-deflate message (RFC 7692: append 00 00 ff ff). */
static int inflate_message(struct conn *c, const char *data, size_t len, size_t *out_len) {
    static const unsigned char tail[4] = {0x00, 0x00, 0xff, 0xff};
    z_stream *z = c->inflater;
    size_t produced = 0;
    if (c->inflater_shared) inflateReset(z); /* each message stands alone */
    for (int part = 0; part < 2; part++) {
        z->next_in = (Bytef *)(part == 0 ? (const unsigned char *)data : tail);
        z->avail_in = (uInt)(part == 0 ? len : sizeof tail);
        while (z->avail_in > 0) {
            grow(&inflate_buf, &inflate_cap, produced + 65536);
            z->next_out = (Bytef *)inflate_buf + produced;
            z->avail_out = (uInt)(inflate_cap - produced);
            int rc = inflate(z, Z_SYNC_FLUSH);
            produced = inflate_cap - z->avail_out;
            if (rc == Z_STREAM_END) {
                /* A peer that finished the stream per message: start a fresh one. */
                inflateReset(z);
                break;
            }
            if (rc == Z_BUF_ERROR && z->avail_out != 0) break; /* needs nothing more */
            if (rc != Z_OK && rc != Z_BUF_ERROR) {
                logf_("inflate failed: %d %s", rc, z->msg ? z->msg : "");
                return -1;
            }
        }
    }
    *out_len = produced;
    return 0;
}

/*
 * Messages inflated with the shared stream, compressed and inflated, in a small
 * direct-mapped table. A server that compresses each event once sends every socket
 * the same bytes, and without context takeover the same bytes inflate to the same
 * text: finding them (a hash of their ends, then a comparison: tens of ns) instead of
 * inflating again (microseconds) keeps the load generator from becoming the
 * bottleneck of a compressed run. Live events repeat the last message; a reconnect
 * storm's catch-up repeats the last few dozen, each to every client.
 */
#define MEMO_SLOTS 4096 /* a storm's catch-up of a few dozen rarely shares a slot */
static struct memo {
    char *in, *out;
    size_t in_len, in_cap, out_len, out_cap;
    struct parsed parsed; /* what on_text reads of `out` */
} memos[MEMO_SLOTS];

static struct memo *memo_slot(const char *data, size_t len) {
    uint64_t h = 1469598103934665603ULL ^ len; /* FNV-1a over up to 64 bytes of each end */
    size_t head = len < 64 ? len : 64;
    for (size_t i = 0; i < head; i++) h = (h ^ (unsigned char)data[i]) * 1099511628211ULL;
    for (size_t i = len > 64 ? len - 64 : len; i < len; i++)
        h = (h ^ (unsigned char)data[i]) * 1099511628211ULL;
    return &memos[(h ^ (h >> 29)) % MEMO_SLOTS];
}

static void on_message(struct conn *c, int opcode, int rsv1, const char *data, size_t len,
                       int64_t read_ns) {
    if (opcode != 1) return; /* binary: not part of the contract, ignored */
    if (rsv1) {
        struct memo *memo = c->inflater_shared ? memo_slot(data, len) : NULL;
        if (memo && len == memo->in_len && memcmp(data, memo->in, len) == 0) {
            account(c, &memo->parsed, memo->out, memo->out_len, read_ns);
            return;
        }
        size_t n;
        if (!c->inflater || inflate_message(c, data, len, &n) < 0) {
            conn_close(c, 1);
            return;
        }
        if (memo) {
            grow(&memo->in, &memo->in_cap, len);
            grow(&memo->out, &memo->out_cap, n);
            memcpy(memo->in, data, len);
            memcpy(memo->out, inflate_buf, n);
            memo->in_len = len;
            memo->out_len = n;
            parse_text(memo->out, n, &memo->parsed);
            account(c, &memo->parsed, memo->out, n, read_ns);
            return;
        }
        on_text(c, inflate_buf, n, read_ns);
    } else {
        on_text(c, data, len, read_ns);
    }
}

static void on_close_frame(struct conn *c, const unsigned char *p, size_t len) {
    int code = len >= 2 ? (p[0] << 8) | p[1] : 1005;
    c->close_code = code;
    switch (code) {
        case 1001: run.close_codes[0]++; break;
        case 1008: run.close_codes[1]++; break;
        case 1011: run.close_codes[2]++; break;
        case 1012: run.close_codes[3]++; break;
        default: run.close_codes[4]++; break;
    }
    char echo[2] = {(char)(code >> 8), (char)(code & 0xff)};
    send_frame(c, 8, echo, 2);
    conn_close(c, 0);
}

/*
 * Parse every complete frame in buf[0, len); return how many bytes that used (the
 * rest is the start of a frame). buf may be c->in, which a close frees: nothing
 * touches buf once the connection is no longer open.
 */
static size_t parse_frames(struct conn *c, char *buf, size_t len, int64_t read_ns) {
    size_t pos = 0;
    while (c->state == CONN_OPEN) {
        unsigned char *p = (unsigned char *)buf + pos;
        size_t avail = len - pos;
        if (avail < 2) break;
        int fin = p[0] & 0x80, rsv1 = p[0] & 0x40, opcode = p[0] & 0x0f;
        int masked = p[1] & 0x80;
        uint64_t plen = p[1] & 0x7f;
        size_t h = 2;
        if (plen == 126) {
            if (avail < 4) break;
            plen = ((uint64_t)p[2] << 8) | p[3];
            h = 4;
        } else if (plen == 127) {
            if (avail < 10) break;
            plen = 0;
            for (int i = 0; i < 8; i++) plen = (plen << 8) | p[2 + i];
            h = 10;
        }
        if (plen > (64u << 20)) {
            logf_("frame of %llu bytes: giving up on the connection", (unsigned long long)plen);
            conn_close(c, 1);
            return 0;
        }
        size_t mask_at = h;
        if (masked) h += 4;
        if (avail < h + plen) break;
        unsigned char *payload = p + h;
        if (masked) { /* servers must not mask; unmask anyway */
            for (uint64_t i = 0; i < plen; i++) payload[i] ^= p[mask_at + (i & 3)];
        }
        pos += h + (size_t)plen;

        if (opcode >= 8) { /* control frames may arrive between fragments */
            if (opcode == 9) send_frame(c, 10, (const char *)payload, (size_t)plen);
            else if (opcode == 8) on_close_frame(c, payload, (size_t)plen);
            continue;
        }
        if (opcode != 0 && fin) {
            on_message(c, opcode, rsv1, (const char *)payload, (size_t)plen, read_ns);
        } else if (opcode != 0) { /* first fragment */
            c->in_fragment = opcode;
            c->frag_rsv1 = rsv1;
            c->frag_len = 0;
            grow(&c->frag, &c->frag_cap, (size_t)plen);
            memcpy(c->frag, payload, (size_t)plen);
            c->frag_len = (size_t)plen;
        } else if (c->in_fragment) { /* continuation */
            grow(&c->frag, &c->frag_cap, c->frag_len + (size_t)plen);
            memcpy(c->frag + c->frag_len, payload, (size_t)plen);
            c->frag_len += (size_t)plen;
            if (fin) {
                int op = c->in_fragment;
                c->in_fragment = 0;
                on_message(c, op, c->frag_rsv1, c->frag, c->frag_len, read_ns);
            }
        }
    }
    return pos;
}

/*
 * Keep the unparsed tail of buf (a partial frame) in the connection's own buffer,
 * which exists only while there is one: 5,000 idle 32 KiB buffers would cost 160 MiB
 * and scatter every read over memory.
 */
static void keep_tail(struct conn *c, const char *buf, size_t len, size_t used) {
    if (c->state != CONN_OPEN) return;
    size_t rest = len - used;
    if (rest == 0) {
        free(c->in);
        c->in = NULL;
        c->in_len = c->in_cap = 0;
        return;
    }
    if (buf == c->in) {
        memmove(c->in, c->in + used, rest);
    } else {
        grow(&c->in, &c->in_cap, rest);
        memcpy(c->in, buf + used, rest);
    }
    c->in_len = rest;
}

static int header_has(const char *headers, const char *name, const char *needle) {
    const char *h = strcasestr(headers, name);
    if (!h) return 0;
    const char *eol = strstr(h, "\r\n");
    const char *n = strcasestr(h, needle);
    return n && (!eol || n < eol);
}

static void on_handshake_bytes(struct conn *c, int64_t read_ns) {
    char *end = memmem(c->in, c->in_len, "\r\n\r\n", 4);
    if (!end) {
        if (c->in_len > 16384) conn_close(c, 1);
        return;
    }
    size_t hlen = (size_t)(end - c->in) + 4;
    char saved = c->in[hlen - 1];
    c->in[hlen - 1] = '\0';
    int ok = strncmp(c->in, "HTTP/1.1 101", 12) == 0 &&
             header_has(c->in, "\nSec-WebSocket-Accept:", WS_ACCEPT);
    int deflate = header_has(c->in, "\nSec-WebSocket-Extensions:", "permessage-deflate");
    int no_takeover =
        header_has(c->in, "\nSec-WebSocket-Extensions:", "server_no_context_takeover");
    if (!ok) {
        if (run.failed < 3) logf_("handshake refused: %.200s", c->in);
        c->in[hlen - 1] = saved;
        conn_close(c, 1);
        return;
    }
    c->in[hlen - 1] = saved;
    memmove(c->in, c->in + hlen, c->in_len - hlen);
    c->in_len -= hlen;
    c->state = CONN_OPEN;
    in_flight--;
    run.open++;
    if (deflate) {
        if (!opt.deflate) {
            logf_("server enabled permessage-deflate that was not offered");
            conn_close(c, 1);
            return;
        }
        run.deflate_accepted++;
        if (no_takeover) {
            /* No window carries over between messages: one stream serves every
               connection, instead of ~44 KiB of zlib state each. */
            static z_stream shared;
            static int shared_ready;
            if (!shared_ready && inflateInit2(&shared, -15) != Z_OK) die("inflateInit2");
            shared_ready = 1;
            c->inflater = &shared;
            c->inflater_shared = 1;
        } else {
            c->inflater = calloc(1, sizeof *c->inflater);
            if (!c->inflater || inflateInit2(c->inflater, -15) != Z_OK) die("inflateInit2");
        }
    }
    if (opt.mode == SUBSCRIBE_BY_MESSAGE) {
        char msg[400], resume[160] = "";
        if (opt.has_since && opt.epoch)
            snprintf(resume, sizeof resume, ",\"since\":%lld,\"epoch\":\"%s\"",
                     (long long)opt.since, opt.epoch);
        else if (opt.has_since)
            snprintf(resume, sizeof resume, ",\"since\":%lld", (long long)opt.since);
        int n = snprintf(msg, sizeof msg, "{\"type\":\"subscribe\",\"feed\":\"%s\"%s}",
                         feed_names[feed_of(c)], resume);
        send_frame(c, 1, msg, (size_t)n);
    }
    keep_tail(c, c->in, c->in_len, parse_frames(c, c->in, c->in_len, read_ns));
    open_more();
}

/* Reads land in one shared buffer unless a partial frame waits in the connection's. */
static char rx[256 * 1024];

static void on_readable(struct conn *c) {
    for (int i = 0; i < 4 && (c->state == CONN_HANDSHAKE || c->state == CONN_OPEN); i++) {
        int direct = c->state == CONN_OPEN && c->in_len == 0;
        char *dst = rx;
        size_t room = sizeof rx;
        if (!direct) {
            grow(&c->in, &c->in_cap, c->in_len + 16384);
            dst = c->in + c->in_len;
            room = c->in_cap - c->in_len;
        }
        ssize_t n = recv(c->fd, dst, room, 0);
        if (n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR)) {
            if (!c->subscribed && run.failed < 3)
                logf_("closed by the server before subscribing: %s",
                      n == 0 ? "end of stream" : strerror(errno));
            conn_close(c, 1);
            return;
        }
        if (n < 0) return;
        int64_t read_ns = now_real_ns();
        win.bytes += (uint64_t)n;
        if (direct) {
            keep_tail(c, rx, (size_t)n, parse_frames(c, rx, (size_t)n, read_ns));
        } else {
            c->in_len += (size_t)n;
            if (c->state == CONN_HANDSHAKE) on_handshake_bytes(c, read_ns);
            else keep_tail(c, c->in, c->in_len, parse_frames(c, c->in, c->in_len, read_ns));
        }
        if ((size_t)n < room) return; /* drained */
    }
}

static void on_writable(struct conn *c) {
    if (c->state == CONN_CONNECTING) {
        int err = 0;
        socklen_t len = sizeof err;
        getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len);
        if (err) {
            if (run.failed < 3) logf_("connect failed: %s", strerror(err));
            conn_close(c, 1);
            open_more();
            return;
        }
        c->state = CONN_HANDSHAKE;
        watch(c, EPOLLIN, EPOLL_CTL_MOD);
        conn_send(c, handshake_reqs[feed_of(c)], handshake_lens[feed_of(c)]);
        return;
    }
    conn_flush(c);
}

/* ---------------------------------------------------------------- reports */

static void print_report(const char *event, int64_t first, int64_t last) {
    double wall = now_mono() - win.t0;
    double sys;
    double cpu = cpu_seconds(&sys) - win.cpu0;
    sys -= win.sys0;
    uint64_t expected_each = last >= first && first > 0 ? (uint64_t)(last - first + 1) : 0;
    uint64_t expected = 0, unique = 0, lost = 0, behind = 0;
    double first_caught = 0, last_caught = 0;
    for (int i = 0; i < opt.conns; i++) {
        struct conn *c = &conns[i];
        if (c->caught_at && (!first_caught || c->caught_at < first_caught))
            first_caught = c->caught_at;
        if (c->caught_at > last_caught) last_caught = c->caught_at;
        if (!c->subscribed) continue; /* never subscribed: counted in failed */
        expected += expected_each;
        unique += c->unique;
        if (c->unique < expected_each) lost += expected_each - c->unique;
        if (expected_each && c->last_seq < last) behind++;
    }
    uint64_t total = 0;
    for (int i = 0; i < HIST_BUCKETS; i++) total += hist[i];
    double p50 = 0, p99 = 0, p999 = 0;
    uint64_t acc = 0;
    int have50 = 0, have99 = 0, have999 = 0;
    for (int i = 0; i < HIST_BUCKETS && total; i++) {
        acc += hist[i];
        if (!have50 && acc * 100 >= total * 50) p50 = hist_value(i), have50 = 1;
        if (!have99 && acc * 100 >= total * 99) p99 = hist_value(i), have99 = 1;
        if (!have999 && acc * 1000 >= total * 999) p999 = hist_value(i), have999 = 1;
    }
    printf("{\"event\":\"%s\",\"name\":\"%s\",\"conns\":%d,\"subscribed\":%d,\"failed\":%d,"
           "\"closed\":%d,\"close_codes\":{\"1001\":%llu,\"1008\":%llu,\"1011\":%llu,"
           "\"1012\":%llu,\"other\":%llu},\"deflate_accepted\":%d,"
           "\"connect_seconds\":%.6f,\"first_seq\":%lld,\"last_seq\":%lld,"
           "\"received\":%llu,\"unique\":%llu,\"expected\":%llu,\"lost\":%llu,"
           "\"behind\":%llu,\"dups\":%llu,\"gaps\":%llu,\"no_timestamp\":%llu,"
           "\"resets\":%llu,\"errors\":%llu,\"other_events\":%llu,\"bytes\":%llu,"
           "\"latency_ms\":{\"count\":%llu,\"p50\":%.3f,\"p99\":%.3f,\"p999\":%.3f,\"max\":%.3f},"
           "\"connect_start\":%.6f,\"until_seq\":%lld,\"caught_up\":%d,"
           "\"first_caught_up_at\":%.6f,\"last_caught_up_at\":%.6f,"
           "\"wall_seconds\":%.6f,\"cpu_seconds\":%.6f,\"cpu_system_seconds\":%.6f,\"hist\":[",
           event, opt.name, opt.conns, run.subscribed, run.failed, run.closed,
           (unsigned long long)run.close_codes[0], (unsigned long long)run.close_codes[1],
           (unsigned long long)run.close_codes[2], (unsigned long long)run.close_codes[3],
           (unsigned long long)run.close_codes[4], run.deflate_accepted,
           run.all_subscribed_at ? run.all_subscribed_at - run.connect_start : -1.0,
           (long long)first, (long long)last, (unsigned long long)win.received,
           (unsigned long long)unique, (unsigned long long)expected,
           (unsigned long long)lost, (unsigned long long)behind,
           (unsigned long long)win.dups, (unsigned long long)win.gaps,
           (unsigned long long)win.no_timestamp, (unsigned long long)win.resets,
           (unsigned long long)win.errors, (unsigned long long)win.other_events,
           (unsigned long long)win.bytes, (unsigned long long)total, p50 / 1000.0,
           p99 / 1000.0, p999 / 1000.0, win.max_us / 1000.0, run.connect_start,
           (long long)opt.until, run.caught_up, first_caught, last_caught, wall, cpu, sys);
    int sep = 0;
    for (int i = 0; i < HIST_BUCKETS; i++) {
        if (!hist[i]) continue;
        printf("%s[%d,%llu]", sep ? "," : "", i, (unsigned long long)hist[i]);
        sep = 1;
    }
    printf("]}\n");
    fflush(stdout);
}

static void reset_window(void) {
    memset(&win, 0, sizeof win);
    memset(hist, 0, sizeof hist);
    for (int i = 0; i < opt.conns; i++) conns[i].unique = 0;
    win.t0 = now_mono();
    win.cpu0 = cpu_seconds(&win.sys0);
}

/* ---------------------------------------------------------------- control */

static struct {
    int pending;
    int64_t first, last;
    double until;
} report_req;

static int quit_requested;
static int connect_requested;

static char ctl_buf[4096];
static size_t ctl_len;

static void on_command(char *line) {
    long long a, b, ms;
    if (strcmp(line, "connect") == 0) {
        connect_requested = 1;
    } else if (strcmp(line, "reset") == 0) {
        reset_window();
    } else if (sscanf(line, "report %lld %lld %lld", &a, &b, &ms) == 3) {
        report_req.pending = 1;
        report_req.first = a;
        report_req.last = b;
        report_req.until = now_mono() + ms / 1000.0;
    } else if (strcmp(line, "quit") == 0) {
        quit_requested = 1;
    } else if (line[0]) {
        logf_("unknown command: %s", line);
    }
}

static void on_stdin(void) {
    ssize_t n = read(0, ctl_buf + ctl_len, sizeof ctl_buf - 1 - ctl_len);
    if (n <= 0) { /* the harness went away: stop rather than run to the deadline */
        quit_requested = 1;
        return;
    }
    ctl_len += (size_t)n;
    char *start = ctl_buf, *nl;
    while ((nl = memchr(start, '\n', ctl_len - (size_t)(start - ctl_buf)))) {
        *nl = '\0';
        on_command(start);
        start = nl + 1;
    }
    ctl_len -= (size_t)(start - ctl_buf);
    memmove(ctl_buf, start, ctl_len);
    if (ctl_len == sizeof ctl_buf - 1) ctl_len = 0; /* an over-long line: drop it */
}

static int all_caught_up(int64_t last) {
    for (int i = 0; i < opt.conns; i++) {
        struct conn *c = &conns[i];
        if (c->state == CONN_OPEN && c->subscribed && c->last_seq < last) return 0;
    }
    return 1;
}

/* ------------------------------------------------------------------- main */

static void usage(void) {
    fprintf(stderr,
            "usage: loadgen [--host 127.0.0.1] [--port 8000] [--feed bench] [--feeds N]\n"
            "               [--path /v1/ws?feed=bench] [--subscribe path|message]\n"
            "               [--conns N] [--concurrency N] [--deflate]\n"
            "               [--duration S] [--deadline S] [--control] [--name NAME]\n"
            "               [--since N [--epoch E]] [--until M] [--source ADDR]\n");
    exit(2);
}

int main(int argc, char **argv) {
    static struct option longopts[] = {
        {"host", required_argument, 0, 'h'},    {"port", required_argument, 0, 'p'},
        {"path", required_argument, 0, 'P'},    {"feed", required_argument, 0, 'f'},
        {"subscribe", required_argument, 0, 's'}, {"conns", required_argument, 0, 'n'},
        {"concurrency", required_argument, 0, 'c'}, {"deflate", no_argument, 0, 'z'},
        {"duration", required_argument, 0, 'd'}, {"deadline", required_argument, 0, 'D'},
        {"control", no_argument, 0, 'C'},       {"name", required_argument, 0, 'N'},
        {"feeds", required_argument, 0, 'F'},   {"since", required_argument, 0, 'S'},
        {"epoch", required_argument, 0, 'E'},   {"until", required_argument, 0, 'U'},
        {"source", required_argument, 0, 'A'},
        {0, 0, 0, 0},
    };
    int ch;
    while ((ch = getopt_long(argc, argv, "", longopts, NULL)) != -1) {
        switch (ch) {
            case 'h': opt.host = optarg; break;
            case 'p': opt.port = atoi(optarg); break;
            case 'P': opt.path = optarg; break;
            case 'f': opt.feed = optarg; break;
            case 's':
                if (strcmp(optarg, "path") == 0) opt.mode = SUBSCRIBE_BY_PATH;
                else if (strcmp(optarg, "message") == 0) opt.mode = SUBSCRIBE_BY_MESSAGE;
                else usage();
                break;
            case 'n': opt.conns = atoi(optarg); break;
            case 'c': opt.concurrency = atoi(optarg); break;
            case 'z': opt.deflate = 1; break;
            case 'd': opt.duration = atof(optarg); break;
            case 'D': opt.deadline = atof(optarg); break;
            case 'C': opt.control = 1; break;
            case 'N': opt.name = optarg; break;
            case 'F': opt.feeds = atoi(optarg); break;
            case 'S':
                opt.has_since = 1;
                opt.since = atoll(optarg);
                break;
            case 'E': opt.epoch = optarg; break;
            case 'U': opt.until = atoll(optarg); break;
            case 'A': opt.source = optarg; break;
            default: usage();
        }
    }
    if (opt.conns <= 0 || opt.concurrency <= 0 || opt.deadline <= 0 || opt.feeds < 0) usage();
    if (opt.feeds && opt.path) usage(); /* --path names one feed */
    if (opt.since < 0 || opt.until < 0 || (opt.epoch && !opt.has_since)) usage();
    /* The epoch goes into a URL and a JSON string unescaped: keep it to safe bytes. */
    if (opt.epoch && strspn(opt.epoch, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
                                       "0123456789-_.:") != strlen(opt.epoch))
        usage();

    /* Every connection is a descriptor: take the hard limit. */
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
        if (rl.rlim_cur < (rlim_t)opt.conns + 16)
            logf_("open-files limit %llu is below %d connections: run more processes",
                  (unsigned long long)rl.rlim_cur, opt.conns);
    }
    signal(SIGPIPE, SIG_IGN);
    alarm((unsigned)opt.deadline + 5); /* last resort if the loop itself wedges */

    int nfeeds = opt.feeds ? opt.feeds : 1;
    handshake_reqs = calloc((size_t)nfeeds, sizeof *handshake_reqs);
    handshake_lens = calloc((size_t)nfeeds, sizeof *handshake_lens);
    feed_names = calloc((size_t)nfeeds, sizeof *feed_names);
    if (!handshake_reqs || !handshake_lens || !feed_names) die("calloc");
    for (int k = 0; k < nfeeds; k++) {
        char name[200], path[512], req[1024], resume[160] = "";
        if (opt.feeds) snprintf(name, sizeof name, "%s-%d", opt.feed, k);
        else snprintf(name, sizeof name, "%s", opt.feed);
        if (opt.has_since && opt.epoch)
            snprintf(resume, sizeof resume, "&since=%lld&epoch=%s", (long long)opt.since,
                     opt.epoch);
        else if (opt.has_since)
            snprintf(resume, sizeof resume, "&since=%lld", (long long)opt.since);
        if (opt.path) snprintf(path, sizeof path, "%s", opt.path);
        else if (opt.mode == SUBSCRIBE_BY_PATH)
            snprintf(path, sizeof path, "/v1/ws?feed=%s%s", name, resume);
        else snprintf(path, sizeof path, "/v1/ws");
        int n = snprintf(req, sizeof req,
                         "GET %s HTTP/1.1\r\nHost: %s:%d\r\nUpgrade: websocket\r\n"
                         "Connection: Upgrade\r\nSec-WebSocket-Key: %s\r\n"
                         "Sec-WebSocket-Version: 13\r\n%s\r\n",
                         path, opt.host, opt.port, WS_KEY,
                         opt.deflate ? "Sec-WebSocket-Extensions: permessage-deflate; "
                                       "client_max_window_bits\r\n"
                                     : "");
        feed_names[k] = strdup(name);
        handshake_reqs[k] = strdup(req);
        handshake_lens[k] = (size_t)n;
    }

    conns = calloc((size_t)opt.conns, sizeof *conns);
    if (!conns) die("calloc");
    epfd = epoll_create1(EPOLL_CLOEXEC);
    if (epfd < 0) die("epoll_create1");
    const uint32_t STDIN_TAG = 0xffffffffu;
    if (opt.control) {
        struct epoll_event ev = {.events = EPOLLIN, .data.u32 = STDIN_TAG};
        if (epoll_ctl(epfd, EPOLL_CTL_ADD, 0, &ev) < 0) die("epoll_ctl stdin");
    } else {
        connect_requested = 1;
    }

    double started = now_mono();
    double hard_stop = started + opt.deadline;
    double standalone_stop = 0;
    int connecting_started = 0;
    reset_window();

    static struct epoll_event events[4096];
    while (!quit_requested) {
        double now = now_mono();
        if (now >= hard_stop) {
            logf_("hard deadline of %.0f s reached", opt.deadline);
            break;
        }
        if (connect_requested && !connecting_started) {
            connecting_started = 1;
            run.connect_start = now_mono();
            open_more();
        }
        if (!opt.control && run.all_subscribed_at && !standalone_stop) {
            reset_window();
            standalone_stop = now + opt.duration;
        }
        if (standalone_stop && now >= standalone_stop) break;
        /* A report asked for while connections are still being made waits for them:
           before they subscribe, "every subscribed connection has LAST" holds vacuously. */
        int settled = !connecting_started || run.all_subscribed_at;
        if (report_req.pending &&
            ((settled && all_caught_up(report_req.last)) || now >= report_req.until)) {
            report_req.pending = 0;
            print_report("report", report_req.first, report_req.last);
        }

        int ready = epoll_wait(epfd, events, 4096, 5);
        if (ready < 0) {
            if (errno == EINTR) continue;
            die("epoll_wait");
        }
        for (int i = 0; i < ready; i++) {
            uint32_t tag = events[i].data.u32;
            if (tag == STDIN_TAG) {
                on_stdin();
                continue;
            }
            struct conn *c = &conns[tag];
            if (c->state == CONN_CLOSED) continue;
            uint32_t e = events[i].events;
            if (e & EPOLLOUT) on_writable(c);
            if ((e & (EPOLLIN | EPOLLERR | EPOLLHUP)) && c->state != CONN_CLOSED &&
                c->state != CONN_CONNECTING)
                on_readable(c);
            else if ((e & (EPOLLERR | EPOLLHUP)) && c->state == CONN_CONNECTING)
                on_writable(c); /* reports the connect error */
        }
    }
    print_report("final", 0, 0);
    for (int i = 0; i < opt.conns; i++)
        if (conns[i].fd > 0 && conns[i].state != CONN_CLOSED && conns[i].state != CONN_IDLE)
            close(conns[i].fd);
    return 0;
}
