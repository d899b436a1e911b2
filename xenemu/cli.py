"""The `xenemu` command."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import signal
import sys
from pathlib import Path

import trio

from . import tracecli
from .daemon import Daemon, DaemonError, Limits, default_socket_dir
from .hypervisor import Hypervisor
from .machine import ConfigError, default_machine, load_machine, machine_from_dict
from .trace import TraceError, TraceReader


def _serve(args) -> int:
    try:
        if args.machine_of:
            with TraceReader(args.machine_of) as reader:
                config = machine_from_dict(reader.header["machine"], str(args.machine_of))
        else:
            config = load_machine(args.config) if args.config else default_machine()
    except (ConfigError, TraceError, OSError) as e:
        print(f"xenemu: {e}", file=sys.stderr)
        return 2
    if args.check_iotlb:
        config = dataclasses.replace(config, check_iotlb=True)
    hv = Hypervisor(config)
    limits = Limits(connections=args.max_connections,
                    connections_per_domain=args.max_connections_per_domain,
                    frame_timeout=args.frame_timeout)
    daemon = Daemon(hv, args.socket_dir, args.record, {"command": " ".join(sys.argv)}, limits)

    async def main():
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async with trio.open_nursery() as nursery:
                paths = await nursery.start(daemon.run)
                _announce(hv, paths, daemon.control_path, args.config or args.machine_of)
                async for signum in signals:
                    logging.getLogger("xenemu").info("xenemu: %s received",
                                                     signal.Signals(signum).name)
                    daemon.stop()
                    break
                # The nursery waits for daemon.run to finish in-flight work and clean up.

    try:
        trio.run(main)
    except DaemonError as e:
        print(f"xenemu: {e}", file=sys.stderr)
        return 1
    except OSError as e:
        print(f"xenemu: cannot serve: {e}", file=sys.stderr)
        return 1
    return 0


def _announce(hv: Hypervisor, paths: dict, control_path, config_path) -> None:
    where = f"the machine of {config_path}" if config_path else "the embedded default machine"
    print(f"xenemu: serving {where}", flush=True)
    for domid, path in paths.items():
        d = hv.domains[domid]
        role = "hardware domain" if d.hardware else "guest"
        print(f"xenemu: d{domid} ({d.name}, {role}, {d.nr_contexts} contexts): "
              f"XENEMU_SOCKET={path}", flush=True)
    print(f"xenemu: control: XENEMU_CONTROL={control_path}", flush=True)
    print("xenemu: ready (SIGINT or SIGTERM stops it)", flush=True)


def _ctl(args) -> int:
    from . import control
    from .ctl import ControlClient, ControlError, format_reply, parse_value

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
    try:
        with ControlClient(args.socket) as ctl:
            reply = ctl.call(args.op, **kwargs)
    except ControlError as e:
        print(f"xenemu ctl {args.op}: {e}", file=sys.stderr)
        return 1
    print(format_reply(args.op, reply))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="xenemu",
                                     description="Userspace emulator of Xen's PV-IOMMU interface")
    parser.add_argument("--log-level", choices=["debug", "info", "warning", "error"],
                        help="debug shows one [PV-IOMMU] line per hypercall "
                             "(default: info for serve, warning for the other commands)")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the daemon")
    serve.add_argument("--config", type=Path, help="machine description (TOML); "
                       "default: the embedded default machine")
    serve.add_argument("--machine-of", type=Path, metavar="TRACE",
                       help="serve the machine a trace was recorded on (instead of --config)")
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
    serve.add_argument("--record", type=Path, metavar="FILE",
                       help="record every hypercall and machine change to a trace "
                            "(`xenemu replay FILE` replays it)")
    serve.set_defaults(func=_serve)
    tracecli.add_commands(sub)

    ctl = sub.add_parser("ctl", help="control the machine: domains, devices, p2m, DMA, faults",
                         description="Send one control request, e.g. "
                                     "`xenemu ctl dma sbdf=0000:00:03.0 addr=0x1000 length=16`. "
                                     "Values: 0x.. integers, true/false, hex:.. or text:.. "
                                     "bytes. `xenemu ctl help` lists the operations.")
    ctl.add_argument("--socket", help="control socket (default: $XENEMU_CONTROL)")
    ctl.add_argument("op")
    ctl.add_argument("args", nargs="*", metavar="key=value")
    ctl.set_defaults(func=_ctl)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    level = args.log_level or ("info" if args.command == "serve" else "warning")
    logging.basicConfig(level=level.upper(), format="%(asctime)s %(message)s",
                        stream=sys.stderr)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
