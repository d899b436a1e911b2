/*
 * common.h - what the benchmark programs (echo.c, load.c) share: the
 * little-endian field access of abi/PROTOCOL.md and a blocking send.
 */
#ifndef XENEMU_BENCH_COMMON_H
#define XENEMU_BENCH_COMMON_H

#include <errno.h>
#include <stdint.h>
#include <sys/socket.h>

#define RECEIVE_SIZE (64 * 1024)   /* one read, as the daemon's */

static inline uint64_t get_le(const unsigned char *p, int n)
{
    uint64_t v = 0;
    while (n--)
        v = v << 8 | p[n];
    return v;
}

static inline void put_le(unsigned char *p, uint64_t v, int n)
{
    for (int i = 0; i < n; i++, v >>= 8)
        p[i] = (unsigned char)v;
}

/* 0, or -1 when the peer is gone. */
static inline int send_all(int fd, const unsigned char *p, size_t n)
{
    while (n) {
        ssize_t w = send(fd, p, n, MSG_NOSIGNAL);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return -1;
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

#endif
