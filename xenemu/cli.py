"""The `xenemu` command."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import signal
import sys
from pathlib import Path

import trio

from . import snapshot
from .daemon import Daemon, DaemonError, Limits
from .paths import default_socket_dir
from .hypervisor import Hypervisor
from .machine import ConfigError, default_machine, load_machine
from .trace import cli as tracecli
from .trace.reader import TraceReader
from .trace.records import TraceError


# Exit statuses of `xenemu serve` (its --help says them too).
EXIT_CANNOT_SERVE = 1     # a live daemon has the sockets, the socket directory is unsafe...
EXIT_BAD_INPUT = 2        # the machine file, trace or snapshot, or an output path, is unusable
EXIT_LOST = 3             # served, but the trace stopped early or the shutdown snapshot failed


def _serve(args) -> int:
    if args.abi_revision and (args.config or args.machine_of or args.restore):
        print("xenemu: --abi-revision chooses the embedded default machine's revision; a machine "
              "file, trace or snapshot carries its own (pv_iommu_revision)", file=sys.stderr)
        return EXIT_BAD_INPUT
    for option, path, replaced in (("--record", args.record, False),
                                   ("--snapshot", args.snapshot, True)):
        problem = path is not None and _unwritable(path, replaced)
        if problem:
            print(f"xenemu: {option} {path}: {problem}", file=sys.stderr)
            return EXIT_BAD_INPUT
    restored = None
    try:
        if args.restore:
            restored = snapshot.read(args.restore)
            hv = snapshot.restore(restored, check_iotlb=args.check_iotlb,
                                  where=str(args.restore))
        else:
            if args.machine_of:
                with TraceReader(args.machine_of) as reader:
                    config = reader.machine
            else:
                config = load_machine(args.config) if args.config else \
                    default_machine(args.abi_revision or 1)
            if args.check_iotlb:
                config = dataclasses.replace(config, check_iotlb=True)
            hv = Hypervisor(config)
    except (ConfigError, TraceError, snapshot.SnapshotError, OSError) as e:
        print(f"xenemu: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    limits = Limits(connections=args.max_connections,
                    connections_per_domain=args.max_connections_per_domain,
                    frame_timeout=args.frame_timeout, frame_memory=args.frame_memory << 20)
    daemon = Daemon(hv, args.socket_dir, args.record, {"command": " ".join(sys.argv)}, limits,
                    snapshot_path=args.snapshot, restored_from=restored)
    del restored        # the daemon drops it once the trace header has it
    if args.restore:
        where = f"the machine restored from {args.restore}"
    elif args.config or args.machine_of:
        where = f"the machine of {args.config or args.machine_of}"
    else:
        where = "the embedded default machine"

    async def main():
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async with trio.open_nursery() as nursery:
                paths = await nursery.start(daemon.run)
                _announce(hv, paths, daemon.control_path, where)
                async for signum in signals:
                    logging.getLogger("xenemu").info("xenemu: %s received",
                                                     signal.Signals(signum).name)
                    daemon.stop()
                    break
                # The nursery waits for daemon.run to finish in-flight work and clean up.

    # trio hands the daemon's refusal over inside an ExceptionGroup (its
    # nurseries are strict): unwrap it to the one line the user should read.
    refusals = []
    try:
        trio.run(main)
    except* DaemonError as group:
        refusals += [str(e) for e in _leaves(group)]
    except* OSError as group:
        refusals += [f"cannot serve: {e}" for e in _leaves(group)]
    if refusals:
        for why in dict.fromkeys(refusals):
            print(f"xenemu: {why}", file=sys.stderr)
        return EXIT_CANNOT_SERVE
    for why in daemon.lost:
        print(f"xenemu: {why}", file=sys.stderr)
    return EXIT_LOST if daemon.lost else 0


def _leaves(group: BaseExceptionGroup) -> list[BaseException]:
    """The exceptions an ExceptionGroup holds, however deeply nested."""
    return [leaf for e in group.exceptions
            for leaf in (_leaves(e) if isinstance(e, BaseExceptionGroup) else [e])]


def _unwritable(path: Path, replaced: bool) -> str | None:
    """Why an output path cannot be written: better said at the start than
    at the end of a session. `replaced`: written as a new file in its
    directory and renamed over `path` (a snapshot), rather than opened in
    place (a trace, which may be a FIFO or a device)."""
    if path.is_dir():
        return "is a directory"
    if not path.parent.is_dir():
        return f"no directory {path.parent}"
    target = path if path.exists() and not replaced else path.parent
    if not os.access(target, os.W_OK):
        return f"{target} is not writable"
    return None


def _announce(hv: Hypervisor, paths: dict, control_path, where: str) -> None:
    print(f"xenemu: serving {where}", flush=True)
    for domid, path in paths.items():
        d = hv.domains[domid]
        role = "hardware domain" if d.hardware else "guest"
        print(f"xenemu: d{domid} ({d.name}, {role}, {d.nr_contexts} contexts): "
              f"XENEMU_SOCKET={path}", flush=True)
    print(f"xenemu: control: XENEMU_CONTROL={control_path}", flush=True)
    print("xenemu: ready (SIGINT or SIGTERM stops it)", flush=True)


def _ctl(args) -> int:
    from . import control, ctl_tables
    from .ctl import ControlClient, ControlError, parse_value

    if args.op == "help":
        print("operations: " + ", ".join(control.OPERATIONS))
        return 0
    kwargs = {}
    for item in args.args:
        key, sep, value = item.partition("=")
        if not sep:
            print(f"xenemu ctl: arguments are key=value, got {item!r}", file=sys.stderr)
            return 2
        kwargs[key] = parse_value(value)
    if "devices" in kwargs and isinstance(kwargs["devices"], str):
        kwargs["devices"] = kwargs["devices"].split(",")
    if args.op == "snapshot" and isinstance(kwargs.get("path"), str):
        # The daemon may run elsewhere: a relative path is the caller's.
        kwargs["path"] = os.path.abspath(kwargs["path"])
    try:
        with ControlClient(args.socket) as ctl:
            reply = ctl.call(args.op, **kwargs)
    except ControlError as e:
        print(f"xenemu ctl {args.op}: {e}", file=sys.stderr)
        return 1
    if args.json:
        print(ctl_tables.to_json(reply))
    else:
        ctl_tables.console().print(ctl_tables.render(args.op, reply))
    return 0


def _top(args) -> int:
    from . import top
    from .ctl import ControlError
    from .ctl_tables import console

    if not 0 < args.interval <= 3600:
        print("xenemu top: --interval must be more than 0 and at most 3600 seconds",
              file=sys.stderr)
        return 2
    try:
        top.run(args.socket, args.interval, args.once, console())
    except ControlError as e:
        print(f"xenemu top: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        pass
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="xenemu",
                                     description="Userspace emulator of Xen's PV-IOMMU interface")
    parser.add_argument("--log-level", choices=["debug", "info", "warning", "error"],
                        help="debug shows one [PV-IOMMU] line per hypercall "
                             "(default: info for serve, warning for the other commands)")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser(
        "serve", help="run the daemon",
        description="Serve the machine until SIGINT or SIGTERM.",
        epilog="Exit status: 0 stopped cleanly; 1 could not serve (sockets in use, unsafe "
               "socket directory, a file that is not a dead socket where a socket goes); 2 the machine file, trace or snapshot could not be used, "
               "or an output path cannot be written; 3 served, but the trace stopped early "
               "(a write failed: it holds the records up to the failure) or the snapshot "
               "at shutdown could not be written; the reason is printed.")
    machine = serve.add_mutually_exclusive_group()
    machine.add_argument("--config", type=Path, help="machine description (TOML); "
                         "default: the embedded default machine")
    machine.add_argument("--machine-of", type=Path, metavar="TRACE",
                         help="serve the machine a trace was recorded on (instead of --config)")
    machine.add_argument("--restore", type=Path, metavar="FILE",
                         help="start from a snapshot (instead of --config): its domains, "
                              "contexts, mappings, devices, memory, p2m and fault log")
    serve.add_argument("--abi-revision", type=int, choices=(1, 2), metavar="{1,2}",
                       help="the PV-IOMMU ABI of the embedded default machine: 1 (default, "
                            "the source patch's) or 2 (Xen RFC v4-v7's do_iommu_op(subop, "
                            "arg)); a machine file says pv_iommu_revision itself")
    serve.add_argument("--socket-dir", type=Path, default=default_socket_dir(),
                       help="directory for the sockets (default: $XENEMU_DIR or /tmp/xenemu-UID)")
    serve.add_argument("--check-iotlb", action="store_true",
                       help="verify every IOTLB hit against the page tables (slower)")
    serve.add_argument("--max-connections", type=int, default=Limits.connections, metavar="N",
                       help=f"connections open at once, in all (default {Limits.connections})")
    serve.add_argument("--max-connections-per-domain", type=int, metavar="N",
                       default=Limits.connections_per_domain,
                       help=f"connections to one domain (default {Limits.connections_per_domain})")
    serve.add_argument("--frame-timeout", type=float, default=Limits.frame_timeout, metavar="S",
                       help="seconds a client may take to finish a frame it has begun "
                            f"(default {Limits.frame_timeout:g})")
    serve.add_argument("--frame-memory", type=int, default=Limits.frame_memory >> 20, metavar="MIB",
                       help="memory for frames longer than 64 KiB and their replies, shared by "
                            "all connections; a frame that does not fit waits its turn "
                            f"(default {Limits.frame_memory >> 20} MiB, at least 2)")
    serve.add_argument("--record", type=Path, metavar="FILE",
                       help="record every hypercall and machine change to a trace "
                            "(`xenemu replay FILE` replays it); if a write fails, recording "
                            "stops there, serving goes on, and the exit status is 3")
    serve.add_argument("--snapshot", type=Path, metavar="FILE",
                       help="write a snapshot of the machine to FILE when stopped by SIGINT "
                            "or SIGTERM, and by `xenemu ctl snapshot` (whose default FILE it "
                            "is); --restore FILE starts from it")
    serve.set_defaults(func=_serve)
    tracecli.add_commands(sub)

    ctl = sub.add_parser("ctl", help="control the machine: domains, devices, p2m, DMA, faults",
                         description="Send one control request, e.g. "
                                     "`xenemu ctl dma sbdf=0000:00:03.0 addr=0x1000 length=16`. "
                                     "Values: 0x.. integers, true/false, hex:.. or text:.. "
                                     "bytes. `xenemu ctl help` lists the operations.")
    socket_help = ("control socket (default: $XENEMU_CONTROL, else control.sock in "
                   "$XENEMU_DIR or /tmp/xenemu-UID, where `serve` puts it)")
    ctl.add_argument("--socket", help=socket_help)
    ctl.add_argument("--json", action="store_true",
                     help="print the reply as JSON (without \"ok\"; bytes as hex strings) "
                          "instead of tables")
    ctl.add_argument("op")
    ctl.add_argument("args", nargs="*", metavar="key=value")
    ctl.set_defaults(func=_ctl)

    top = sub.add_parser("top", help="a live view of a running daemon",
                         description="Hypercalls per second per domain and sub-op, errors by "
                                     "name, IOTLB hits and misses, contexts and table pages, "
                                     "faults as they arrive, refreshed in place (control op "
                                     "`stats`). Ctrl-C ends it.",
                         epilog="Exit status: 0 done; 1 the daemon could not be reached or "
                                "went away; 2 bad arguments.")
    top.add_argument("--socket", help=socket_help)
    top.add_argument("--interval", type=float, default=1.0, metavar="S",
                     help="seconds between frames (default 1, at most 3600)")
    top.add_argument("--once", action="store_true",
                     help="print one frame and exit (rates: averages since the daemon started)")
    top.set_defaults(func=_top)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    level = args.log_level or ("info" if args.command == "serve" else "warning")
    logging.basicConfig(level=level.upper(), format="%(asctime)s %(message)s",
                        stream=sys.stderr)
    try:
        status = args.func(args)
        sys.stdout.flush()      # here, where a closed pipe is caught, not at exit
        return status
    except BrokenPipeError:
        # `xenemu trace show big.xt | head`: the reader has gone, so do we,
        # quietly, with the status of a command SIGPIPE stopped. Whatever is
        # left in stdout's buffer goes to /dev/null, not to a second error.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 128 + signal.SIGPIPE


if __name__ == "__main__":
    sys.exit(main())
