"""Xen's error numbers (xen/include/public/errno.h, mirrored in abi/xen/errno.h).

Hypercalls return them negated. They are Xen's values, not the host's, which
is why nothing here uses Python's errno module.
"""

import enum


class XenErrno(enum.IntEnum):
    EPERM = 1
    ENOENT = 2
    ESRCH = 3
    EINTR = 4
    EIO = 5
    ENXIO = 6
    E2BIG = 7
    ENOEXEC = 8
    EBADF = 9
    ECHILD = 10
    EAGAIN = 11
    ENOMEM = 12
    EACCES = 13
    EFAULT = 14
    EBUSY = 16
    EEXIST = 17
    EXDEV = 18
    ENODEV = 19
    EISDIR = 21
    EINVAL = 22
    ENFILE = 23
    EMFILE = 24
    ENOSPC = 28
    EROFS = 30
    EMLINK = 31
    EDOM = 33
    ERANGE = 34
    EDEADLK = 35
    ENAMETOOLONG = 36
    ENOLCK = 37
    ENOSYS = 38
    ENOTEMPTY = 39
    EBADRQC = 56
    ENODATA = 61
    ETIME = 62
    EBADMSG = 74
    EOVERFLOW = 75
    EILSEQ = 84
    ERESTART = 85  # internal to Xen: becomes a continuation, never reaches a guest
    ENOTSOCK = 88
    EMSGSIZE = 90
    EOPNOTSUPP = 95
    EADDRINUSE = 98
    EADDRNOTAVAIL = 99
    ENOBUFS = 105
    EISCONN = 106
    ENOTCONN = 107
    ETIMEDOUT = 110
    ECONNREFUSED = 111


class XenError(Exception):
    """An operation of the Xen model fails with -errno, as Xen's functions
    return one; `why` says why in words (the log line's, or the control
    reply's, reason)."""

    def __init__(self, errno: XenErrno, why: str = ""):
        super().__init__(why)
        self.errno = errno
        self.why = why


def result_name(ret: int) -> str:
    """'0', '-EADDRINUSE', or the bare number for values Xen does not name."""
    if ret >= 0:
        return str(ret)
    try:
        return "-" + XenErrno(-ret).name
    except ValueError:
        return str(ret)
