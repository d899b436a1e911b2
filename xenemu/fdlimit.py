"""Descriptors: the connection limits must fit RLIMIT_NOFILE.

Each connection is a descriptor, and so are each domain's listening socket,
the control socket and its connections, the trace, a snapshot being written
and trio's own (epoll, its wake-up pair). Once the limit is reached accept()
fails with EMFILE: the client waits in the backlog, unanswered, and trio logs
a traceback every 0.1 s. So at start the daemon raises its soft limit as far
as it needs (up to the hard limit); what is still short comes off the
connection limits, and a client over them gets ERROR LIMIT at once.
"""

from __future__ import annotations

import os
import resource

# Trio's epoll and wake-up socketpair, the control listener, the trace, a
# snapshot's temporary file, and a margin for what a library opens.
OWN_DESCRIPTORS = 16


def open_descriptors() -> int:
    """Descriptors this process has open now (3 where /proc is missing)."""
    try:
        return len(os.listdir("/proc/self/fd")) - 1     # minus the one listdir used
    except OSError:
        return 3


def room_for(wanted: int, reserved: int) -> int:
    """Descriptors left beyond `reserved`, once the soft limit has been raised
    towards reserved + wanted as far as the hard limit lets it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = reserved + wanted
    if soft == resource.RLIM_INFINITY:
        return wanted
    if soft < need:
        raised = need if hard == resource.RLIM_INFINITY else min(hard, need)
        if raised > soft:
            resource.setrlimit(resource.RLIMIT_NOFILE, (raised, hard))
            soft = raised
    return soft - reserved
