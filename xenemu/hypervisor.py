"""The hypervisor core: domains and the hypercall table. Sans-IO.

`Hypervisor.hypercall()` runs one hypercall for a domain against the guest
memory its frame carried and returns the return value, as Xen's hypercall
entry does. A long operation may return -ERESTART: Xen turns that into a
continuation that re-executes the same hypercall, and so must the caller
(`complete()` does it in a loop; the daemon yields to other domains between
rounds). -ERESTART never reaches a guest.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from . import abi
from .errno import XenErrno
from .guest import GuestMemory
from .machine import DomainConfig, MachineConfig
from .pv_iommu import PvIommu
from .wire import Call, Reply

log = logging.getLogger("xenemu.hypervisor")

RESTART = -XenErrno.ERESTART


@dataclass
class Domain:
    domid: int
    name: str
    hardware: bool
    iommu_enabled: bool
    nr_contexts: int

    @classmethod
    def from_config(cls, cfg: DomainConfig) -> Domain:
        return cls(domid=cfg.domid, name=cfg.name or f"d{cfg.domid}", hardware=cfg.hardware,
                   iommu_enabled=cfg.iommu, nr_contexts=cfg.contexts)


class Hypervisor:
    def __init__(self, config: MachineConfig):
        self.config = config
        self.domains = {d.domid: Domain.from_config(d) for d in config.domains}
        self.pv_iommu = PvIommu(self)
        self._table = {abi.HYPERVISOR_iommu_op: self.pv_iommu.do_iommu_op}

    def hypercall(self, domid: int, op: int, args: tuple[int, ...], mem: GuestMemory) -> int:
        handler = self._table.get(op)
        if handler is None:
            log.debug("d%d: hypercall %d not implemented -> -ENOSYS", domid, op)
            return -XenErrno.ENOSYS
        return handler(self.domains[domid], args, mem)

    def complete(self, domid: int, call: Call) -> Reply:
        """Run `call` to the end, continuations included, in process."""
        mem = GuestMemory(call.regions)
        while (ret := self.hypercall(domid, call.op, call.args, mem)) == RESTART:
            pass
        return Reply(call.req_id, ret, mem.regions())
