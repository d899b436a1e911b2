"""The Python names of cext/hw.h agree with the compiled library."""
from xenemu.hw import common
from xenemu.hw._hwlib import ffi, lib


def test_status_codes_match_c():
    for s in common.Status:
        name = "HW_OK" if s.name == "OK" else f"HW_E_{s.name}"
        assert getattr(lib, name) == s


def test_fault_kinds_match_c():
    for f in common.Fault:
        assert getattr(lib, f"HW_FAULT_{f.name}") == f


def test_constants_match_c():
    assert lib.HW_PAGE_SIZE == common.PAGE_SIZE
    assert (lib.HW_PTE_R, lib.HW_PTE_W) == (common.PERM_R, common.PERM_W)
    assert lib.HW_OWNER_NONE == common.OWNER_NONE
    assert (lib.HW_INTR_FIRST, lib.HW_INTR_LAST) == (common.INTR_FIRST,
                                                       common.INTR_LAST)
    assert (lib.HW_MAX_CTX, lib.HW_MAX_DEV, lib.HW_MAX_FAULTS, lib.HW_MAX_POOLS) == (
        common.MAX_CONTEXTS, common.MAX_DEVICES, common.MAX_FAULTS, common.MAX_POOLS)
    assert (lib.HW_PTE_A, lib.HW_PTE_D) == (common.PTE_A, common.PTE_D)


def test_sbdf_packing():
    assert common.sbdf(1, 0x3A, 0x10) == 0x13A10


def test_counters_have_the_fields_of_the_c_struct():
    assert common.Counters._fields == tuple(
        f for f, _ in ffi.typeof("struct hw_counters").fields)


def test_inject_sites_match_c():
    for s in common.InjectSite:
        assert getattr(lib, f"HW_INJECT_{s.name}") == s


def test_page_request_names_match_c():
    assert (lib.HW_PRQ_PER_CTX, lib.HW_MAX_PAGE_REQS) == (common.PRQ_PER_CTX,
                                                          common.MAX_PAGE_REQS)
    for s in common.PrqState:
        assert getattr(lib, f"HW_PRQ_{s.name}") == s
    for c in common.PrqCode:
        assert getattr(lib, f"HW_PRQ_{c.name}") == c
    assert common.PageRequest._fields[:6] == ("sbdf", "pasid", "addr", "write", "ctx", "group")
