"""cext's public headers (hw.h, tracepack.h, p2m.h, fastpath.h) are the one source of the cffi
declarations: _build.py reads their marked public parts, every C name Python
calls is declared there, and nothing internal to cext/ (hw_internal.h) or
benchmark-only reaches the library."""
import re
from pathlib import Path

import pytest

from xenemu.hw import _build
from xenemu.hw._hwlib import ffi, lib

ROOT = Path(__file__).resolve().parents[2]
PUBLIC = "\n".join(_build.cdef_from_header(h.read_text(), h.name) for h in _build.HEADERS)


def _declared(text: str) -> set[str]:
    """hw_/HW_, tp_/TP_, p2m_/P2M_ and fp_/FP_ names a C text declares
    (functions, constants, enumerators)."""
    return set(re.findall(r"\b((?:hw|tp|p2m|fp)_\w+)\s*\(", text)) | set(
        re.findall(r"#\s*define\s+((?:HW|TP|P2M|FP)_\w+)", text)) | set(
        re.findall(r"\b((?:HW|TP|P2M|FP)_\w+)\s*=", text))


def test_the_build_has_no_declaration_of_its_own():
    # The only cdef text is the header's: no prototype or constant in _build.py.
    assert not _declared(Path(_build.__file__).read_text())


def test_every_name_python_calls_comes_from_the_public_header():
    used = set()
    for path in (ROOT / "xenemu").rglob("*.py"):
        used |= set(re.findall(r"\blib\.((?:hw|HW|tp|TP|p2m|P2M|fp|FP)_\w+)", path.read_text()))
    assert used, "xenemu calls the C library through lib.hw_*"
    assert any(name.startswith("tp_") for name in used), "and the trace packer through lib.tp_*"
    assert any(name.startswith("p2m_") for name in used), "and the p2m runs through lib.p2m_*"
    assert "fp_answer" in used, "and the fast path through lib.fp_*"
    assert used <= _declared(PUBLIC)
    for name in used:
        assert hasattr(lib, name), name


def test_internal_helpers_and_the_benchmark_floor_stay_out_of_the_library():
    internal = _declared((ROOT / "cext" / "hw_internal.h").read_text())
    assert {"hw_tlb_find", "hw_ref_take_one", "hw_pt_walk"} <= internal
    for name in internal | {"hw_floor_gather", "floor_gather"}:
        assert not hasattr(lib, name), name


def test_structs_are_declared_whole_so_cffi_checks_their_layout():
    # A struct cffi knows field by field, as the header states it.
    assert [f for f, _ in ffi.typeof("struct hw_counters").fields] == [
        "hits", "misses", "walks", "invalidations", "stale"]
    assert ffi.typeof("struct hw_iommu").fields  # not opaque


def test_integer_macros_become_compiler_values():
    cdef = _build.cdef_from_header(
        "#x\n/* BEGIN cffi public */\n#define HW_BIG (1ULL << 40) /* note */\n"
        "#define HW_NONE UINT64_MAX\nint hw_f(void);\n/* END cffi public */\n")
    assert "#define HW_BIG ...\n#define HW_NONE ...\nint hw_f(void);" in cdef


@pytest.mark.parametrize("line", [
    "#if HW_X", "#include <stdint.h>",
    "static inline int hw_f(void) { return 0; }", "int hw_g(void) {",
    "#define HW_LONG 1 + \\"])
def test_what_cffi_cannot_read_is_refused_with_its_line(line):
    text = "/* BEGIN cffi public */\n/* a\n comment */\n" + line + "\n/* END cffi public */"
    with pytest.raises(ValueError, match=r"^hw.h:4: cffi cannot read this"):
        _build.cdef_from_header(text)


def test_the_marks_are_required():
    with pytest.raises(ValueError, match="BEGIN cffi public"):
        _build.cdef_from_header("int hw_f(void);\n")
