/* One QMP client that negotiates, then sends N `query-status` commands back to back, each after the
 * previous reply: the lone round trip for `bench/instructions.sh`.
 * Usage: lone-client SOCKET_PATH N.  Built by `make bench-instructions`. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/socket.h>
#include <sys/un.h>

static int fd;
static char buffer[65536];
static int held;

/* Reads until one line is complete and drops it; exits on EOF or error. */
static void read_line(void) {
    for (;;) {
        char *newline = memchr(buffer, '\n', held);
        if (newline) {
            int length = newline - buffer + 1;
            memmove(buffer, newline + 1, held - length);
            held -= length;
            return;
        }
        int got = read(fd, buffer + held, sizeof buffer - held);
        if (got <= 0) {
            perror("read");
            exit(1);
        }
        held += got;
    }
}

static void write_all(const char *text) {
    size_t length = strlen(text);
    if (write(fd, text, length) != (ssize_t)length) {
        perror("write");
        exit(1);
    }
}

int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: lone-client SOCKET_PATH N\n");
        return 2;
    }
    struct sockaddr_un address = {.sun_family = AF_UNIX};
    strncpy(address.sun_path, argv[1], sizeof address.sun_path - 1);
    int count = atoi(argv[2]);
    fd = socket(AF_UNIX, SOCK_STREAM, 0);
    if (fd < 0 || connect(fd, (struct sockaddr *)&address, sizeof address) != 0) {
        perror("connect");
        return 1;
    }
    read_line(); /* greeting */
    write_all("{\"execute\":\"qmp_capabilities\"}\n");
    read_line();
    for (int i = 0; i < count; i++) {
        write_all("{\"execute\":\"query-status\",\"id\":1}\n");
        read_line();
    }
    return 0;
}
