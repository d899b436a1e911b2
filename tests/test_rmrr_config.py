"""The machine file's [[rmrr]] tables (issue 15): devices' reserved memory
ranges, kept in trace headers and snapshots as the rest of the machine.
(Refusals of bad tables, in one line through the CLI: test_schemas.)"""

from __future__ import annotations

import copy

import msgpack

from support import DaemonProcess, assert_replays
from xenemu import snapshot
from xenemu.control import Control
from xenemu.hypervisor import Hypervisor
from xenemu.machine import default_machine, machine_from_dict, machine_to_dict
from xenemu.pci import parse_sbdf
from xenemu.trace.reader import TraceReader

USB = parse_sbdf("0000:00:04.0")


def test_the_default_machine_gives_d0s_usb_controller_a_low_memory_rmrr():
    for revision in (1, 2):
        machine = default_machine(revision)
        assert machine.rmrr == ((USB, 0xE8, 2),)
        assert USB in machine.domains[0].devices
        (sbdf, start, pages), = machine.rmrr
        assert (start + pages) << 12 <= 1 << 20       # below 1 MiB, as a USB controller's


def test_a_trace_header_carries_the_ranges_and_serves_them_again(tmp_path):
    cfg = tmp_path / "m.toml"
    cfg.write_text('[[domain]]\ndomid = 0\nhardware = true\nmemory_mib = 32\ncontexts = 2\n'
                   'devices = ["0000:00:09.0", "0000:00:0a.0"]\n'
                   '[[rmrr]]\nsbdf = "0000:00:0a.0"\nstart_pfn = 0x300\nnr_pages = 1\n'
                   '[[rmrr]]\nsbdf = "0000:00:09.0"\nstart_pfn = 0x100\nnr_pages = 16\n')
    first = DaemonProcess(tmp_path / "a", "--config", str(cfg))
    assert first.stop() == 0
    with TraceReader(first.trace) as reader:
        assert reader.header.machine["rmrr"] == [
            {"sbdf": "0000:00:0a.0", "start_pfn": 0x300, "nr_pages": 1},
            {"sbdf": "0000:00:09.0", "start_pfn": 0x100, "nr_pages": 16}]
        assert reader.machine.rmrr == ((parse_sbdf("0000:00:0a.0"), 0x300, 1),
                                       (parse_sbdf("0000:00:09.0"), 0x100, 16))
    assert_replays(first.trace)


def test_a_machine_without_ranges_keeps_the_header_it_had():
    machine = machine_from_dict({"domain": [{"domid": 0, "devices": ["0000:00:04.0"]}]})
    assert machine.rmrr == () and "rmrr" not in machine_to_dict(machine)


def test_a_snapshot_keeps_the_ranges_even_of_a_device_that_left_every_domain():
    hv = Hypervisor(default_machine())
    assert Control(hv).handle({"op": "device_deassign", "sbdf": "0000:00:04.0"})["ok"]
    snap = msgpack.unpackb(msgpack.packb(snapshot.take(hv), use_bin_type=True), raw=False)
    assert snap["machine"]["rmrr"] == [{"sbdf": "0000:00:04.0", "start_pfn": 0xE8, "nr_pages": 2}]
    assert snapshot.restore(copy.deepcopy(snap)).config.rmrr == ((USB, 0xE8, 2),)
