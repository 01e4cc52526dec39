/* The floor of a userspace hop, for `qmp-bench proxy`: accept unix clients, connect each to the
 * upstream unix socket, copy bytes both ways with poll(); no parsing, no fd passing.
 * Usage: floor-proxy LISTEN_PATH UPSTREAM_PATH.  Built by `make bench` into .build/. */
#define _GNU_SOURCE
#include <poll.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#define MAX_PAIRS 64

#ifdef FOOTPRINT_PROBE
/* bench/footprint.sh builds the floor with this hook: after every read it runs the first
 * PROBE_CODE generated functions (80-byte bodies laid out one after another: that many code
 * lines, in address order) and loads PROBE_DATA cache lines (64 bytes apart, same lines each time),
 * so the user CPU a cold code or data line costs shows against the floor itself. With PROBE_SAME
 * set it calls the first function PROBE_CODE times instead: the same instructions, two lines. */
#include <stdint.h>
#include <stdlib.h>
uint64_t probe_code(long count, int same);
static long probe_code_count, probe_data_count;
static int probe_same;
static volatile char *probe_data;
static volatile uint64_t probe_sink;
static void probe(void) {
    uint64_t sum = probe_code(probe_code_count, probe_same);
    for (long line = 0; line < probe_data_count; line++) sum += probe_data[line * 64];
    probe_sink = sum;
}
#define PROBE() probe()
#else
#define PROBE() ((void)0)
#endif

static int unix_socket(const char *path, int listening) {
    struct sockaddr_un address = {.sun_family = AF_UNIX};
    strncpy(address.sun_path, path, sizeof address.sun_path - 1);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) return -1;
    if (listening) {
        unlink(path);
        if (bind(fd, (struct sockaddr *)&address, sizeof address) < 0 || listen(fd, 16) < 0) return -1;
    } else if (connect(fd, (struct sockaddr *)&address, sizeof address) < 0) {
        close(fd);
        return -1;
    }
    return fd;
}

int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: floor-proxy LISTEN_PATH UPSTREAM_PATH\n");
        return 2;
    }
#ifdef FOOTPRINT_PROBE
    probe_code_count = atol(getenv("PROBE_CODE") ? getenv("PROBE_CODE") : "0");
    probe_data_count = atol(getenv("PROBE_DATA") ? getenv("PROBE_DATA") : "0");
    probe_same = getenv("PROBE_SAME") != NULL;
    probe_data = calloc(probe_data_count + 1, 64);
#endif
    int listener = unix_socket(argv[1], 1);
    if (listener < 0) {
        perror("floor-proxy: listen");
        return 1;
    }
    struct pollfd fds[1 + 2 * MAX_PAIRS];
    int pairs = 0;
    char buffer[65536];
    fds[0] = (struct pollfd){.fd = listener, .events = POLLIN};
    for (;;) {
        if (poll(fds, 1 + 2 * pairs, -1) < 0) continue;
        for (int i = 1; i < 1 + 2 * pairs; i++) {
            if (!(fds[i].revents & (POLLIN | POLLHUP | POLLERR))) continue;
            int peer = fds[i % 2 ? i + 1 : i - 1].fd;
            ssize_t n = read(fds[i].fd, buffer, sizeof buffer);
            PROBE();
            for (ssize_t off = 0; n > 0 && off < n;) {
                ssize_t w = write(peer, buffer + off, n - off);
                if (w <= 0) break;
                off += w;
            }
            if (n <= 0) { /* one side closed: drop the pair (last pair moves into its place) */
                int first = i % 2 ? i : i - 1;
                close(fds[first].fd);
                close(fds[first + 1].fd);
                pairs--;
                fds[first] = fds[1 + 2 * pairs];
                fds[first + 1] = fds[2 + 2 * pairs];
                break;
            }
        }
        if ((fds[0].revents & POLLIN) && pairs < MAX_PAIRS) {
            int client = accept4(listener, NULL, NULL, SOCK_CLOEXEC);
            int upstream = client < 0 ? -1 : unix_socket(argv[2], 0);
            if (upstream < 0) {
                if (client >= 0) close(client);
                continue;
            }
            fds[1 + 2 * pairs] = (struct pollfd){.fd = client, .events = POLLIN};
            fds[2 + 2 * pairs] = (struct pollfd){.fd = upstream, .events = POLLIN};
            pairs++;
        }
    }
}
