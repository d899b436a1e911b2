/* SPDX-License-Identifier: MIT */
/*
 * xenemu/wire.h - the frames a guest exchanges with the xenemu daemon.
 *
 * A frame carries one hypercall the way the CPU would: the hypercall number,
 * five register-sized arguments, and the guest memory the handle arguments
 * point to (one or more regions, each named by its guest address). The reply
 * carries the hypercall's return value and every region as the hypervisor
 * left it, so outputs written on error reach the guest too.
 *
 * Everything is little-endian. Structures are packed by construction (only
 * naturally aligned fields, no padding); region descriptors follow each
 * other without padding, so read them with memcpy. The full specification is
 * abi/PROTOCOL.md.
 */
#ifndef XENEMU_WIRE_H
#define XENEMU_WIRE_H

#if defined(__cplusplus)
#include <cstdint>
#else
#include <stdint.h>
#endif

#define XENEMU_MAGIC        0x554D4558u     /* "XEMU" on the wire */
#define XENEMU_WIRE_VERSION 1u
#define XENEMU_MAX_FRAME    (1u << 20)      /* whole frame, header included */
#define XENEMU_MAX_REGIONS  16u
#define XENEMU_NR_ARGS      5u

/* Frame types. */
#define XENEMU_FRAME_CALL   1u  /* client -> daemon: one hypercall */
#define XENEMU_FRAME_REPLY  2u  /* daemon -> client: its result */
#define XENEMU_FRAME_ERROR  3u  /* daemon -> client: protocol error, then close */

/* Protocol error codes (struct xenemu_error.code). */
#define XENEMU_ERR_BAD_MAGIC    1u  /* first four bytes are not XENEMU_MAGIC */
#define XENEMU_ERR_BAD_VERSION  2u  /* version this daemon does not speak */
#define XENEMU_ERR_BAD_LENGTH   3u  /* length below the minimum or above XENEMU_MAX_FRAME */
#define XENEMU_ERR_BAD_TYPE     4u  /* frame type not accepted from this side */
#define XENEMU_ERR_MALFORMED    5u  /* body and regions do not add up to length, reserved field set */
#define XENEMU_ERR_TRUNCATED    6u  /* the stream ended inside a frame */
#define XENEMU_ERR_INTERNAL     7u  /* the daemon failed on this frame (a bug: see its log) */
#define XENEMU_ERR_LIMIT        8u  /* a daemon limit was reached (connections); try later */
#define XENEMU_ERR_TIMEOUT      9u  /* a frame was begun and not finished in time */
#define XENEMU_ERR_GONE        10u  /* the domain of this socket has been destroyed */

/* Every frame starts with this header. */
struct xenemu_frame_hdr {
    uint32_t magic;       /* XENEMU_MAGIC */
    uint16_t version;     /* XENEMU_WIRE_VERSION */
    uint16_t type;        /* XENEMU_FRAME_* */
    uint32_t length;      /* bytes in the whole frame, this header included */
    uint16_t nr_regions;  /* regions after the body (CALL and REPLY), else 0 */
    uint16_t reserved;    /* must be 0 */
    uint64_t req_id;      /* chosen by the client, echoed by the reply */
};

/* CALL body: the hypercall as the guest's registers hold it. */
struct xenemu_call {
    uint64_t op;                       /* __HYPERVISOR_* */
    uint64_t args[XENEMU_NR_ARGS];     /* arguments 1..5 (rdi rsi rdx r10 r8) */
};

/* REPLY body: the hypercall's return value: 0, positive, or -XEN_E*. */
struct xenemu_reply {
    int64_t ret;
};

/* ERROR body, followed by msg_len bytes of UTF-8 text (no terminator). */
struct xenemu_error {
    uint32_t code;        /* XENEMU_ERR_* */
    uint32_t msg_len;
};

/*
 * A region of guest memory: gaddr is the guest address a handle argument
 * holds, followed by len bytes of its contents. A hypercall may read and
 * write only inside the regions sent; an access outside them is -EFAULT, as
 * copy_from_guest/copy_to_guest would fail on an unmapped address.
 */
struct xenemu_region {
    uint64_t gaddr;
    uint32_t len;
    uint32_t reserved;    /* must be 0 */
};

#define XENEMU_HDR_SIZE     24u
#define XENEMU_CALL_SIZE    48u
#define XENEMU_REPLY_SIZE    8u
#define XENEMU_ERROR_SIZE    8u
#define XENEMU_REGION_SIZE  16u

#if defined(__cplusplus) && __cplusplus >= 201103L
#define XENEMU_WIRE_ASSERT(cond, name) static_assert(cond, #name)
#elif defined(__STDC_VERSION__) && __STDC_VERSION__ >= 201112L
#define XENEMU_WIRE_ASSERT(cond, name) _Static_assert(cond, #name)
#else
#define XENEMU_WIRE_ASSERT(cond, name) \
    typedef char xenemu_wire_assert_ ## name[(cond) ? 1 : -1]
#endif
XENEMU_WIRE_ASSERT(sizeof(struct xenemu_frame_hdr) == XENEMU_HDR_SIZE, hdr);
XENEMU_WIRE_ASSERT(sizeof(struct xenemu_call) == XENEMU_CALL_SIZE, call);
XENEMU_WIRE_ASSERT(sizeof(struct xenemu_reply) == XENEMU_REPLY_SIZE, reply);
XENEMU_WIRE_ASSERT(sizeof(struct xenemu_error) == XENEMU_ERROR_SIZE, error);
XENEMU_WIRE_ASSERT(sizeof(struct xenemu_region) == XENEMU_REGION_SIZE, region);
#undef XENEMU_WIRE_ASSERT

#endif /* XENEMU_WIRE_H */
