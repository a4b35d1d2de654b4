/* What one send of a ~1 KiB frame costs this machine's kernel, from C.
 *
 * The per-core delivery ceiling of any fan-out server on loopback is set by this:
 * a C loop that writes one pre-built buffer to N connected TCP sockets (the writer,
 * pinned to one core), while a reader process drains them with epoll (on another).
 * Prints the writer's CPU per send (user and system, getrusage) and the sends per
 * second of CPU that implies. Bounded: --rounds rounds over --conns sockets.
 *
 *   gcc -O2 -o sendcost sendcost.c && ./sendcost --conns 5000 --rounds 100 --size 1100
 *
 * Built and run by scripts/send_cost.py.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static void die(const char *what) {
    perror(what);
    exit(1);
}

static void pin(int core) {
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(core, &set);
    sched_setaffinity(0, sizeof set, &set); /* best effort */
}

static double seconds(struct timeval tv) { return tv.tv_sec + tv.tv_usec / 1e6; }

int main(int argc, char **argv) {
    int conns = 5000, rounds = 100, size = 1100;
    for (int i = 1; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "--conns")) conns = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--rounds")) rounds = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--size")) size = atoi(argv[i + 1]);
    }
    int listener = socket(AF_INET, SOCK_STREAM, 0);
    if (listener < 0) die("socket");
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof addr;
    if (bind(listener, (struct sockaddr *)&addr, len) || listen(listener, 8192)) die("listen");
    if (getsockname(listener, (struct sockaddr *)&addr, &len)) die("getsockname");

    int ready[2];
    if (pipe(ready)) die("pipe");
    pid_t reader = fork();
    if (reader < 0) die("fork");
    if (reader == 0) { /* the reader: connect, then drain everything until EOF */
        pin(1);
        close(listener);
        int ep = epoll_create1(0);
        for (int i = 0; i < conns; i++) {
            int fd = socket(AF_INET, SOCK_STREAM, 0);
            if (fd < 0 || connect(fd, (struct sockaddr *)&addr, sizeof addr)) die("connect");
            struct epoll_event ev = {.events = EPOLLIN, .data.fd = fd};
            epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev);
        }
        if (write(ready[1], "r", 1) != 1) die("ready");
        static char buf[1 << 16];
        struct epoll_event events[256];
        int open = conns;
        while (open > 0) {
            int n = epoll_wait(ep, events, 256, 30000);
            if (n <= 0) break; /* bounded: 30 s without data ends it */
            for (int i = 0; i < n; i++) {
                ssize_t got = read(events[i].data.fd, buf, sizeof buf);
                if (got <= 0) {
                    close(events[i].data.fd);
                    open--;
                }
            }
        }
        _exit(0);
    }
    pin(0);
    int *fds = calloc((size_t)conns, sizeof *fds);
    for (int i = 0; i < conns; i++) {
        fds[i] = accept(listener, NULL, NULL);
        if (fds[i] < 0) die("accept");
        int one = 1;
        setsockopt(fds[i], IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    }
    char byte;
    if (read(ready[0], &byte, 1) != 1) die("ready");
    char *frame = malloc((size_t)size);
    memset(frame, 'x', (size_t)size);
    frame[0] = (char)0x81;

    struct rusage before, after;
    struct timespec start, end;
    getrusage(RUSAGE_SELF, &before);
    clock_gettime(CLOCK_MONOTONIC, &start);
    long sends = 0;
    for (int r = 0; r < rounds; r++) {
        for (int i = 0; i < conns; i++) {
            if (write(fds[i], frame, (size_t)size) == size) sends++;
        }
        usleep(20000); /* like events arriving: the readers catch up in between */
    }
    clock_gettime(CLOCK_MONOTONIC, &end);
    getrusage(RUSAGE_SELF, &after);
    for (int i = 0; i < conns; i++) close(fds[i]);
    waitpid(reader, NULL, 0);

    double user = seconds(after.ru_utime) - seconds(before.ru_utime);
    double sys = seconds(after.ru_stime) - seconds(before.ru_stime);
    double per_send = (user + sys) / (double)sends * 1e6;
    printf("{\"sends\":%ld,\"size\":%d,\"conns\":%d,\"user_s\":%.3f,\"sys_s\":%.3f,"
           "\"us_per_send\":%.2f,\"sends_per_cpu_second\":%.0f,\"wall_s\":%.2f}\n",
           sends, size, conns, user, sys, per_send, 1e6 / per_send,
           (double)(end.tv_sec - start.tv_sec) + (end.tv_nsec - start.tv_nsec) / 1e9);
    return 0;
}
