"""The daemon: trio code that moves bytes between sockets and the core.

One Unix socket per domain, created owner-only in a private directory: the
calling domain is the socket a frame arrived on, never a field the guest
writes. Each connection runs in its own task: bytes go to its engine
Connection (xenemu.engine), replies come back, all those of one read in one
send (trio's low-level calls: xenemu.sockio). Requests of one connection are
served in order; a continuation (-ERESTART) yields to other tasks before the
call's next round, so a long operation never stalls other domains.
A broken frame gets an ERROR frame and closes its connection, nothing else.
The daemon enforces the limits and deadlines, carries out the effects of
control requests (domain sockets, snapshot files, written off the event
loop) and, with a TraceWriter, writes the engine's events to the trace in
the order they ran. With a snapshot path, the machine is written there when
the daemon stops cleanly, and by the control op `snapshot`.
"""

from __future__ import annotations

import functools
import math
import logging
import os
import socket as stdsocket
import stat
from dataclasses import dataclass, replace
from pathlib import Path

import msgpack
import trio

from . import control, snapshot
from .domain import Domain
from .engine import CloseDomain, Connection, Engine, OpenDomainSocket, WriteSnapshot
from .fdlimit import OWN_DESCRIPTORS, open_descriptors, room_for
from .hypervisor import Hypervisor
from .membudget import ByteBudget
from .paths import control_socket_path, domain_socket_path
from .snapshot import SnapshotError
from .sockio import SocketIO
from .trace.writer import TraceWriter
from .wire import ERR_GONE, ERR_LIMIT, ERR_TIMEOUT, MAX_FRAME, encode_error

log = logging.getLogger("xenemu.daemon")

RECEIVE_SIZE = 64 * 1024
SHUTDOWN_GRACE = 5.0       # seconds in-flight work may take once a stop is asked
ERROR_SEND_TIMEOUT = 5.0   # a peer that will not read its error frame is dropped after this


@dataclass(frozen=True)
class Limits:
    """What one client can hold of the daemon.

    Requests in flight per connection need no number: the daemon reads at
    most RECEIVE_SIZE bytes at a time and answers them before reading more,
    so a client that writes without reading is stopped by its own socket
    buffers (backpressure), holding at most one read's worth of requests.
    A frame longer than that is held only with bytes of `frame_memory`,
    shared by all connections (see membudget.py).
    """
    connections: int = 512              # in all
    connections_per_domain: int = 128
    frame_timeout: float = 10.0         # seconds to finish a frame once begun
    frame_memory: int = 64 << 20        # bytes for large frames and their replies, in all
    control_connections: int = 16       # open at once (a harness needs a few); counted in descriptors


# A frame longer than one read is charged to the shared budget: twice its
# length, for its bytes as received and executed, then its reply.
LARGE_FRAME = RECEIVE_SIZE
# Domains the control socket may create after the start, each a listening
# socket, counted when the soft descriptor limit is raised.
LATER_DOMAINS = 16


def fit_descriptors(limits: Limits, nr_domains: int) -> tuple[Limits, int]:
    """The limits lowered to what RLIMIT_NOFILE allows (raised first if it
    can be), and the descriptors left for connections and domain sockets."""
    reserved = open_descriptors() + OWN_DESCRIPTORS + limits.control_connections
    room = room_for(limits.connections + nr_domains + LATER_DOMAINS, reserved)
    fit = max(1, room - nr_domains)
    if fit < limits.connections:
        per_domain = min(limits.connections_per_domain, fit)
        log.warning("xenemu: %d descriptors (RLIMIT_NOFILE; raise it with ulimit -n) allow "
                    "%d connections in all and %d per domain, not %d and %d",
                    room + reserved, fit, per_domain, limits.connections,
                    limits.connections_per_domain)
        limits = replace(limits, connections=fit, connections_per_domain=per_domain)
    return limits, room


class DaemonError(Exception):
    """The daemon cannot serve (sockets in use, an unsafe directory...): one line for the user."""


def _file_kind(mode: int) -> str:
    for test, kind in ((stat.S_ISREG, "a regular file"), (stat.S_ISDIR, "a directory"),
                       (stat.S_ISLNK, "a symbolic link"), (stat.S_ISFIFO, "a FIFO")):
        if test(mode):
            return kind
    return "a special file"


class Daemon:
    def __init__(self, hv: Hypervisor, socket_dir: Path, record: Path | None = None,
                 record_meta: dict | None = None, limits: Limits = Limits(), *,
                 snapshot_path: Path | None = None, restored_from: dict | None = None):
        """`restored_from`: the snapshot hv was restored from, for the trace's header."""
        self.hv = hv
        # _fd_room: descriptors for connections and domain listening sockets.
        self.limits, self._fd_room = fit_descriptors(limits, len(hv.domains))
        self._frame_memory = ByteBudget(max(self.limits.frame_memory, 2 * MAX_FRAME))
        self._open: dict[int, int] = {}     # domid -> connections open to its live incarnation
        self._record = (record, record_meta)
        self._restored_from = restored_from
        self.recorder: TraceWriter | None = None
        self.engine = Engine(hv, record=record is not None, snapshots=True,
                             snapshot_path=snapshot_path)
        log.info("xenemu: hypercalls answered %s", "by the C fast path where it can"
                 if self.engine.fast_path else "by the Python handlers alone (XENEMU_FAST_PATH=0)")
        self.snapshot_path = snapshot_path
        # What the daemon was asked to keep and could not (a trace stopped
        # early, the snapshot at shutdown): why `xenemu serve` exits 3.
        self.lost: list[str] = []
        self.socket_dir = Path(socket_dir)
        self.paths: dict[int, Path] = {}
        self.control_path = control_socket_path(self.socket_dir)
        self._stopping = False
        self._accept_scope: trio.CancelScope | None = None
        self._accept_nursery: trio.Nursery | None = None
        self._listener_scopes: dict[int, trio.CancelScope] = {}
        self._conn_nursery: trio.Nursery | None = None
        # The scopes of connections waiting in a read: what stop() and a
        # domain's destruction cancel.
        self._reading: dict[trio.CancelScope, Connection] = {}
        self._next_conn = 0
        self._control_open = 0
        # Snapshot files are written one at a time, in the order they were
        # taken (trio's Lock is fair): two writes to one file would share its
        # temporary file.
        self._snapshot_writing = trio.Lock()

    # -- lifecycle -------------------------------------------------------------

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Serve until stop(); `task_status.started()` gets {domid: socket path}."""
        self._make_private_dir()
        control_listener = self._listen(self.control_path)
        try:
            # Only now: a daemon refused for a live socket must not clobber its trace.
            if self._record[0] is not None:
                self.recorder = TraceWriter.create(self._record[0], self.hv.config,
                                                   self._record[1], self._restored_from,
                                                   on_error=self._recording_stopped)
            self._restored_from = None      # its guest memory need not stay in ours
            async with trio.open_nursery() as conn_nursery:
                self._conn_nursery = conn_nursery
                with trio.CancelScope() as self._accept_scope:
                    async with trio.open_nursery() as self._accept_nursery:
                        self._accept_nursery.start_soon(functools.partial(
                            trio.serve_listeners, self._serve_control, [control_listener],
                            handler_nursery=conn_nursery))
                        for domid in self.hv.domains:
                            self._open_domain_socket(domid)
                        task_status.started(dict(self.paths))
                # Accepting has stopped: connections finish what they hold, within a grace time.
                conn_nursery.cancel_scope.deadline = trio.current_time() + SHUTDOWN_GRACE
            # Only on a clean stop: a daemon that could not start must not
            # replace a good snapshot with its fresh machine.
            if self.snapshot_path is not None:
                try:
                    self._write_snapshot(self.engine.snapshot())
                except SnapshotError as e:
                    log.error("xenemu: %s", e)
                    self.lost.append(str(e))
        finally:
            with trio.CancelScope(shield=True):
                await control_listener.aclose()
            self._remove_sockets()
            if self.recorder:
                self.recorder.close()
                log.info("xenemu: %d records written to %s", self.recorder.records, self._record[0])
            log.info("xenemu: stopped")

    def _open_domain_socket(self, domid: int) -> Path:
        """Listen on the domain's socket, in a scope that closing the domain cancels."""
        path = domain_socket_path(self.socket_dir, domid)
        listener = self._listen(path)
        self.paths[domid] = path
        scope = self._listener_scopes[domid] = trio.CancelScope()
        handler = functools.partial(self._serve_connection, domid=domid,
                                    domain=self.hv.domains[domid])

        async def serve():
            with scope:
                await trio.serve_listeners(handler, [listener],
                                           handler_nursery=self._conn_nursery)
            with trio.CancelScope(shield=True):
                await listener.aclose()

        self._accept_nursery.start_soon(serve)
        return path

    def _domain_created(self, domid: int, reply: dict) -> dict:
        try:
            return {**reply, "socket": str(self._open_domain_socket(domid))}
        except DaemonError as e:    # its socket path is taken: a domain nobody could reach
            return self.engine.domain_not_served(domid, str(e))

    def _domain_destroyed(self, domid: int) -> None:
        """Stop accepting for domid, and end every connection to the destroyed
        incarnation: its slots are free at once, for a successor of the same domid."""
        self._listener_scopes.pop(domid).cancel()
        self.paths.pop(domid).unlink(missing_ok=True)
        # Its connections see it (Connection.gone: the domid no longer names
        # the domain they were opened for); those waiting are woken.
        self._open.pop(domid, None)
        for scope, engine_conn in self._reading.items():
            if engine_conn.gone:
                scope.cancel()

    @staticmethod
    def _write_snapshot(effect: WriteSnapshot) -> dict:
        """The bytes the engine took, to their file (SnapshotError if they cannot be)."""
        snapshot.write_bytes(effect.path, effect.data, effect.reply)
        return effect.reply

    def _record_events(self) -> None:
        """The engine's events so far (what one receive buffer or control
        request produced), to the trace in the order they ran, in one write."""
        events = self.engine.events
        if events:
            if self.recorder:
                self.recorder.write_batch(events)
            events.clear()

    def _recording_stopped(self, records: int, error: OSError) -> None:
        why = f"recording to {self._record[0]} stopped after {records} records: {error}"
        log.error("xenemu: %s", why)
        self.lost.append(why)

    def stop(self) -> None:
        """Stop accepting, let each connection finish the requests it has read, then return."""
        if self._stopping:
            return
        self._stopping = True
        log.info("xenemu: stopping")
        if self._accept_scope is not None:
            self._accept_scope.cancel()
        for scope in self._reading:
            scope.cancel()

    # -- sockets ---------------------------------------------------------------

    def _listen(self, path: Path) -> trio.SocketListener:
        """An owner-only listening socket at path (the directory is private too)."""
        self._clear_stale(path)
        sock = stdsocket.socket(stdsocket.AF_UNIX, stdsocket.SOCK_STREAM)
        try:
            sock.bind(str(path))
            os.chmod(path, 0o600)
            sock.listen(128)
        except OSError as e:    # a path too long for AF_UNIX, a directory we may not write...
            sock.close()
            raise DaemonError(f"cannot listen on {path}: {e.strerror or e}") from None
        return trio.SocketListener(trio.socket.from_stdlib_socket(sock))

    def _make_private_dir(self) -> None:
        """The socket directory, made if missing: ours and closed to others.
        Given as a symbolic link, the link must be ours too (lstat), or its
        owner could re-point it at another directory once we have checked."""
        where = self.socket_dir
        try:
            link = os.lstat(where)
        except FileNotFoundError:
            link = None
        except OSError as e:
            raise DaemonError(f"socket directory {where}: {e.strerror}") from None
        if link is not None and stat.S_ISLNK(link.st_mode) and link.st_uid != os.getuid():
            raise DaemonError(f"socket directory {where} is a symbolic link owned by uid "
                              f"{link.st_uid}, not by this user: its owner could re-point it")
        try:
            if link is None:
                where.mkdir(mode=0o700, parents=True, exist_ok=True)
            st = where.stat()
        except OSError as e:
            raise DaemonError(f"socket directory {where}: {e.strerror or e}") from None
        if not stat.S_ISDIR(st.st_mode):
            raise DaemonError(f"socket directory {where} is not a directory")
        if st.st_uid != os.getuid() or stat.S_IMODE(st.st_mode) & 0o077:
            raise DaemonError(f"socket directory {where} must be owned by this user and not "
                              f"open to others (owner uid {st.st_uid}, "
                              f"mode {stat.S_IMODE(st.st_mode):o})")

    @staticmethod
    def _clear_stale(path: Path) -> None:
        """Remove a socket left by a daemon that died; refuse anything else.

        Only a socket nobody answers (ECONNREFUSED) is replaced: a live one
        belongs to another daemon, and a file, directory, link or FIFO of
        that name is the user's, never ours to delete."""
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            return
        if not stat.S_ISSOCK(st.st_mode):
            raise DaemonError(f"{path} exists and is {_file_kind(st.st_mode)}, not a socket: "
                              f"not replacing it (move it away or use another --socket-dir)")
        probe = stdsocket.socket(stdsocket.AF_UNIX, stdsocket.SOCK_STREAM)
        try:
            probe.connect(str(path))
        except FileNotFoundError:
            return                      # removed meanwhile
        except ConnectionRefusedError:
            path.unlink(missing_ok=True)
        except OSError as e:
            raise DaemonError(f"{path}: cannot tell whether a daemon answers there "
                              f"({e.strerror or e}): not replacing it") from None
        else:
            raise DaemonError(f"{path} is in use: is another xenemu daemon running?")
        finally:
            probe.close()

    def _remove_sockets(self) -> None:
        for path in [*self.paths.values(), self.control_path]:
            path.unlink(missing_ok=True)

    # -- connections -----------------------------------------------------------

    async def _serve_connection(self, stream: trio.SocketStream, domid: int,
                                domain: Domain) -> None:
        self._next_conn += 1
        conn = f"d{domid} conn {self._next_conn}"
        if self.hv.domains.get(domid) is not domain:    # destroyed since it was accepted
            await self._send_error_and_close(stream, ERR_GONE, f"d{domid} has been destroyed")
            return
        refusal = self._over_limit(domid)
        if refusal:
            log.warning("%s: refused: %s", conn, refusal)
            await self._send_error_and_close(stream, ERR_LIMIT, refusal)
            return
        self._open[domid] = self._open.get(domid, 0) + 1
        engine_conn = Connection(self.engine, domain, conn)
        try:
            await self._serve_frames(stream, engine_conn)
        finally:
            if not engine_conn.gone:    # else its domain's destruction has freed the slot
                self._open[domid] -= 1

    def _over_limit(self, domid: int) -> str | None:
        # Domains created since the start took descriptors from the connections'.
        most = min(self.limits.connections, self._fd_room - len(self.hv.domains))
        if sum(self._open.values()) >= most:
            return f"too many connections (at most {most} in all)"
        if self._open.get(domid, 0) >= self.limits.connections_per_domain:
            return (f"too many connections to d{domid} "
                    f"(at most {self.limits.connections_per_domain})")
        return None

    async def _send_error_and_close(self, stream, code: int, message: str, req_id: int = 0):
        with trio.move_on_after(ERROR_SEND_TIMEOUT):
            try:
                await stream.send_all(encode_error(req_id, code, message))
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass
        await trio.aclose_forcefully(stream)

    async def _serve_frames(self, stream: trio.SocketStream, engine_conn: Connection) -> None:
        conn, domid, decoder = engine_conn.name, engine_conn.domid, engine_conn.decoder
        log.debug("%s: connected", conn)
        io = SocketIO(stream)   # the hot path's reads and writes; the stream closes
        timeout = self.limits.frame_timeout
        # A frame's clock: the time spent waiting for its bytes, from its first
        # to its last, whatever arrives in between. Time the daemon spends
        # answering, sending or waiting for frame memory is not the client's.
        clock_of = -1           # decoder.taken when the half-received frame's clock started
        left = timeout          # of that clock
        held = 0                # bytes of the shared frame memory this connection holds
        timed_out = False
        try:
            async with stream:
                # One scope for the connection's life, not one per read (a scope
                # costs as much as a hypercall). Its deadline is armed only while
                # a frame is half received; stop() cancels it only while waiting.
                with trio.CancelScope() as scope:
                    while not self._stopping and not engine_conn.gone:
                        half = decoder.buffered     # setting a deadline is not free: only then
                        if half:
                            if decoder.taken != clock_of:      # a new frame has begun
                                clock_of, left = decoder.taken, timeout
                            if held or decoder.pending_length > LARGE_FRAME:
                                held = await self._hold_frame_memory(scope, engine_conn, held)
                            began = trio.current_time()
                            scope.deadline = began + left
                            # A read that finds bytes waiting is no cancellation
                            # point: a clock that ran out ends the frame here.
                            await trio.lowlevel.checkpoint_if_cancelled()
                        elif held:
                            self._frame_memory.release(held)
                            held = 0
                        self._reading[scope] = engine_conn
                        try:
                            data = await io.receive_some(RECEIVE_SIZE)
                        finally:
                            del self._reading[scope]
                        if half:
                            scope.deadline = math.inf
                            left -= trio.current_time() - began
                        if not data:
                            engine_conn.end_of_input()
                            break
                        decoder.feed(data)
                        if engine_conn.gone:
                            break
                        if not await self._answer(io, engine_conn, held):
                            break
                timed_out = scope.cancelled_caught and not self._stopping and not engine_conn.gone
                if engine_conn.gone:
                    log.info("%s: d%d has been destroyed; closing", conn, domid)
                    await self._send_error_and_close(
                        stream, ERR_GONE, f"d{domid} has been destroyed",
                        engine_conn.unanswered or decoder.pending_req_id)
                elif timed_out:
                    log.warning("%s: a frame begun %d bytes ago was not finished within %g s; "
                                "closing", conn, decoder.buffered, timeout)
                    await self._send_error_and_close(
                        stream, ERR_TIMEOUT, f"frame not finished within "
                        f"{timeout:g} s ({decoder.buffered} bytes received)",
                        decoder.pending_req_id)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            log.info("%s: peer went away", conn)
        finally:
            if held:
                self._frame_memory.release(held)
            self._record_events()       # a frame the peer left cut off
        log.debug("%s: closed", conn)

    async def _hold_frame_memory(self, scope: trio.CancelScope, engine_conn: Connection,
                                 held: int) -> int:
        """What the half-received frame needs of the shared frame memory, taken
        before reading more of it (waiting, without reading, if others hold
        it): a large frame is charged twice its length (its bytes, its reply);
        one read's worth is the connection's own."""
        length = engine_conn.decoder.pending_length
        need = 2 * length if length > LARGE_FRAME else 0
        if need < held:
            self._frame_memory.release(held - need)
        elif need > held:
            self._reading[scope] = engine_conn  # stop() and a destroy end the wait too
            try:
                await self._frame_memory.acquire(need - held)
            finally:
                del self._reading[scope]
        return need

    async def _answer(self, io: SocketIO, engine_conn: Connection, held: int) -> bool:
        """Serve every whole call buffered, their replies in one send; False
        when the connection must close.
        `held`: frame memory is held for a large frame, whose reply the client
        must take within the frame timeout (others may be waiting for it)."""
        replies = await self._run_calls(engine_conn)
        keep_open = not engine_conn.closing
        # A trio cancel scope costs microseconds, as much as a hypercall: the
        # replies of a healthy connection are sent without one.
        if keep_open and replies and not held:
            await io.send_all(replies)
        elif replies:
            timeout = self.limits.frame_timeout if keep_open else ERROR_SEND_TIMEOUT
            with trio.move_on_after(timeout) as sending:
                await io.send_all(replies)
            if sending.cancelled_caught and keep_open:
                log.warning("%s: a reply of %d bytes not taken within %g s while holding "
                            "frame memory; closing", engine_conn.name, len(replies), timeout)
                keep_open = False
        return keep_open

    async def _run_calls(self, engine_conn: Connection) -> bytes:
        """The replies to every whole call buffered. A continuing call lets
        other connections in between its rounds, as Xen's preemption does.
        Shielded: once started it runs to its end even if the guest hangs
        up, as Xen's would; each round is short."""
        replies = engine_conn.answer()
        self._record_events()
        if not engine_conn.continuing:
            return replies
        replies = [replies]
        with trio.CancelScope(shield=True):
            while engine_conn.continuing:
                await trio.sleep(0)
                # Destroyed between two rounds: Xen never runs a dying domain's
                # vCPUs again, so the call ends there, unanswered (the engine
                # runs no round on a successor of the same domid).
                replies.append(engine_conn.answer())
                self._record_events()
        return b"".join(replies)

    # -- control ------------------------------------------------------------------

    async def _serve_control(self, stream: trio.SocketStream) -> None:
        """msgpack requests in, one reply each, at most Limits.control_connections at once."""
        async with stream:
            most = self.limits.control_connections
            if self._control_open >= most:
                why = f"too many control connections (at most {most} at once)"
                log.warning("control: connection refused: %s", why)
                await self._send_control_refusal(stream, why)
                return
            self._control_open += 1
            try:
                await self._serve_control_requests(stream)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass
            finally:
                self._control_open -= 1

    async def _serve_control_requests(self, stream: trio.SocketStream) -> None:
        """A stream that cannot be read on (broken msgpack, a request over
        MAX_REQUEST) is out of step: it gets the replies to the requests
        before the fault, one saying what was wrong, and is closed."""
        unpacker = control.unpacker()
        received = start = 0        # bytes in; where the request being read begins
        while not self._stopping:
            data = await stream.receive_some(RECEIVE_SIZE)
            if not data:
                return
            received += len(data)
            replies = []
            try:
                unpacker.feed(data)
                why = None
                for req in unpacker:
                    # The unpacker's buffer bound is not exact: measure each request.
                    if unpacker.tell() - start > control.MAX_REQUEST:
                        break
                    start = unpacker.tell()
                    replies.append(control.pack(await self._control_request(req)))
                if received - start > control.MAX_REQUEST:
                    why = f"a control request is at most {control.MAX_REQUEST} bytes"
            except msgpack.BufferFull:
                why = f"a control request is at most {control.MAX_REQUEST} bytes"
            except msgpack.FormatError:
                why = "the request is not msgpack (a byte that begins no msgpack value)"
            except msgpack.StackError:
                why = "the request is not msgpack this daemon reads (nested too deep)"
            except ValueError as e:     # ExtraData, a str that is not UTF-8...
                why = f"the request is not valid msgpack ({e or type(e).__name__})"
            if why is None:
                if replies:
                    await stream.send_all(b"".join(replies))
                continue
            log.warning("control: %s; closing the connection", why)
            await self._send_control_refusal(stream, why, b"".join(replies))
            return

    @staticmethod
    async def _send_control_refusal(stream: trio.SocketStream, why: str, before=b"") -> None:
        reply = control.pack({"ok": False, "error": f"{why}; closing the connection"})
        with trio.move_on_after(ERROR_SEND_TIMEOUT):
            try:
                await stream.send_all(before + reply)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass

    async def _control_request(self, req) -> dict:
        """The engine's reply, once its effects are carried out: a snapshot
        is taken at once and written off the event loop."""
        reply, effects = self.engine.control(req)
        for effect in effects:
            if isinstance(effect, OpenDomainSocket):
                reply = self._domain_created(effect.domid, reply)
            elif isinstance(effect, CloseDomain):
                self._domain_destroyed(effect.domid)
        self._record_events()
        for effect in effects:
            if isinstance(effect, WriteSnapshot):
                try:
                    async with self._snapshot_writing:
                        await trio.to_thread.run_sync(self._write_snapshot, effect)
                except SnapshotError as e:
                    log.info("control: snapshot refused: %s", e)
                    reply = {"ok": False, "error": str(e)}
        return reply
