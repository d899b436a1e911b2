/*
 * echo.c - the floor of a round trip: a bare server speaking the daemon's
 * framing that writes every frame back unchanged.
 *
 *   bench_echo SOCKET_PATH      prints "ready", serves until killed
 *
 * It works as xenemu's daemon does (one thread, every connection in one
 * poll loop, 64 KiB reads, whole frames answered together in one write),
 * minus everything the daemon does with a frame, so that
 * daemon time / echo time is the daemon's own cost. A frame whose header
 * is not the protocol's closes its connection.
 */
#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <xenemu/wire.h>

#include "common.h"

#define MAX_CONNS 64
/* Room for a whole frame of the largest size plus one read beyond it. */
#define BUF_SIZE (XENEMU_MAX_FRAME + RECEIVE_SIZE)

struct conn {
    int fd;
    size_t have;
    unsigned char *buf;
};

/* Read what has arrived and echo every whole frame; -1 closes. */
static int serve(struct conn *c)
{
    ssize_t r = recv(c->fd, c->buf + c->have, RECEIVE_SIZE, 0);
    size_t end = 0;

    if (r < 0 && errno == EINTR)
        return 0;
    if (r <= 0)
        return -1;
    c->have += (size_t)r;
    while (c->have - end >= XENEMU_HDR_SIZE) {
        const unsigned char *h = c->buf + end;
        uint64_t length = get_le(h + 8, 4);

        if (get_le(h, 4) != XENEMU_MAGIC || length < XENEMU_HDR_SIZE ||
            length > XENEMU_MAX_FRAME)
            return -1;
        if (c->have - end < length)
            break;
        end += length;
    }
    if (end && send_all(c->fd, c->buf, end) < 0)
        return -1;
    memmove(c->buf, c->buf + end, c->have - end);
    c->have -= end;
    return 0;
}

int main(int argc, char **argv)
{
    struct sockaddr_un addr;
    struct pollfd pfd[MAX_CONNS + 1];
    struct conn conns[MAX_CONNS];
    int n = 0, lfd;

    if (argc != 2 || strlen(argv[1]) >= sizeof(addr.sun_path)) {
        fprintf(stderr, "usage: bench_echo SOCKET_PATH\n");
        return 2;
    }
    memset(&addr, 0, sizeof(addr));
    addr.sun_family = AF_UNIX;
    strcpy(addr.sun_path, argv[1]);
    lfd = socket(AF_UNIX, SOCK_STREAM, 0);
    unlink(argv[1]);
    if (lfd < 0 || bind(lfd, (struct sockaddr *)&addr, sizeof(addr)) < 0 ||
        listen(lfd, 128) < 0) {
        perror("bench_echo: listen");
        return 1;
    }
    printf("ready\n");
    fflush(stdout);
    for (;;) {
        pfd[0] = (struct pollfd){.fd = lfd, .events = POLLIN};
        for (int i = 0; i < n; i++)
            pfd[i + 1] = (struct pollfd){.fd = conns[i].fd, .events = POLLIN};
        if (poll(pfd, (nfds_t)n + 1, -1) < 0) {
            if (errno == EINTR)
                continue;
            perror("bench_echo: poll");
            return 1;
        }
        /* Connections first, from the end, so closing one (moving the last
         * into its slot) never skips a ready descriptor. */
        for (int i = n - 1; i >= 0; i--) {
            if (!(pfd[i + 1].revents & (POLLIN | POLLHUP | POLLERR)))
                continue;
            if (serve(&conns[i]) < 0) {
                close(conns[i].fd);
                free(conns[i].buf);
                conns[i] = conns[--n];
            }
        }
        if (pfd[0].revents & POLLIN) {
            int fd = accept(lfd, NULL, NULL);
            unsigned char *buf = fd >= 0 && n < MAX_CONNS ? malloc(BUF_SIZE) : NULL;

            if (buf)
                conns[n++] = (struct conn){.fd = fd, .have = 0, .buf = buf};
            else if (fd >= 0)
                close(fd);
        }
    }
}
