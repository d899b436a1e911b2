"""Fixtures shared by the tests (helpers live in support.py)."""

from __future__ import annotations

import subprocess

import pytest
from hypothesis import settings

from support import BUILD, ROOT, DaemonProcess, assert_replays, checked_local

# Property tests check outcomes, never speed: no per-example deadline, which
# a loaded 2-core CI machine would trip (speed is measured by `make bench`).
settings.register_profile("xenemu", deadline=None)
settings.load_profile("xenemu")


@pytest.fixture
def daemon(tmp_path):
    d = DaemonProcess(tmp_path)
    yield d
    # Every test leaves a consistent machine: references match mappings,
    # devices sit where their domain says, no stale IOTLB entry was hit.
    check = d.ctl("check") if d.proc.poll() is None else {"consistent": True}
    rc = d.stop()
    assert check["consistent"], check["problems"]
    assert rc == 0, f"daemon exited with {rc}:\n{d.log()}"
    # And whatever the test did replays from its trace, byte for byte.
    assert_replays(d.trace)


@pytest.fixture
def local(tmp_path):
    """The default machine (as `xenemu serve --check-iotlb` builds it), driven
    in process through its engine (xenemu.inprocess): no daemon, no socket."""
    from xenemu.machine import default_machine
    with checked_local(default_machine(), tmp_path / "trace.xt") as m:
        yield m


@pytest.fixture(scope="session")
def c_build():
    """The C client library and examples, built as `make clients` builds them."""
    subprocess.run(["make", "-s", "clients"], cwd=ROOT, check=True)
    return BUILD


