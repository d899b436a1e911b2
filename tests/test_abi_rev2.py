"""Revision 2's header, abi/rev2/xen/pv-iommu.h: every struct and constant as
the reference file's §3-§4 give them (rev2_layout), as compiled by C99, C11
and C++; clean under -Wall -Wextra -Werror -pedantic; its asserts live."""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest

from rev2_layout import CONSTANTS, STRUCTS
from support import ROOT, abi_includes

HEADER = ROOT / "abi" / "rev2" / "xen" / "pv-iommu.h"
LANGUAGES = [("gcc", "-std=c99"), ("gcc", "-std=c11"), ("g++", "-std=c++11"),
             ("g++", "-std=c++17")]


def _compile(tmp_path, compiler: str, std: str, src, *, link: bool = False):
    if shutil.which(compiler) is None:
        pytest.skip(f"{compiler} is not installed")
    out = tmp_path / "prog"
    lang = ["-x", "c++"] if compiler == "g++" else []
    cmd = [compiler, std, "-Wall", "-Wextra", "-Werror", "-pedantic", *abi_includes(2), *lang,
           str(src), "-o", str(out)]
    subprocess.run(cmd if link else [*cmd, "-c"], check=True, capture_output=True, text=True)
    return out


@pytest.mark.parametrize("compiler,std", [LANGUAGES[0], LANGUAGES[1], LANGUAGES[3]])
def test_every_size_offset_and_constant_is_v7s(tmp_path, compiler, std):
    prog = _compile(tmp_path, compiler, std, ROOT / "tests" / "c" / "abi_dump_rev2.c", link=True)
    out = subprocess.run([str(prog)], capture_output=True, text=True, check=True).stdout
    sizes, fields, consts = {}, {}, {}
    for line in out.splitlines():
        parts = line.split()
        if parts[0] == "const":
            consts[parts[1]] = int(parts[2])
        elif "." in parts[0]:
            struct, field = parts[0].split(".", 1)
            fields.setdefault(struct, {})[field] = (int(parts[1]), int(parts[2]))
        else:
            sizes[parts[0]] = int(parts[1])
    want_sizes = {name: size for name, (size, _) in STRUCTS.items()}
    if compiler == "g++":       # C++ has no size-0 struct: the empty one is 1
        want_sizes["pv_iommu_flush_nested"] = 1
    assert sizes == want_sizes
    assert fields == {name: f for name, (_, f) in STRUCTS.items() if f}
    assert consts == CONSTANTS


@pytest.mark.parametrize("compiler,std", LANGUAGES)
def test_headers_compile_cleanly_with_linux_prototype(tmp_path, compiler, std):
    """The ABI header alone, and with the client's, which gives Linux's prototype."""
    src = tmp_path / "t.c"
    src.write_text("#include <xen/pv-iommu.h>\n#include <xen/errno.h>\n#include <xenemu_client.h>\n"
                   "long (*hypercall)(unsigned int, void *) = HYPERVISOR_iommu_op;\n"
                   "int main(void) { return XENEMU_PV_IOMMU_REVISION == 2 ? 0 : 1; }\n")
    _compile(tmp_path, compiler, std, src)


def test_static_asserts_catch_a_wrong_layout(tmp_path):
    """The header's asserts are live: a struct laid out differently fails the build."""
    (tmp_path / "xen").mkdir()
    (tmp_path / "xen" / "pv-iommu.h").write_text(
        HEADER.read_text().replace("uint32_t arena_order;", "uint64_t arena_order;", 1))
    src = tmp_path / "t.c"
    src.write_text("#include <xen/pv-iommu.h>\nint main(void) { return 0; }\n")
    result = subprocess.run(["gcc", "-std=c11", f"-I{tmp_path}", f"-I{ROOT / 'abi'}", "-c",
                             str(src), "-o", str(tmp_path / "t.o")], capture_output=True, text=True)
    assert result.returncode != 0
    assert "init_size" in result.stderr


def test_an_assert_pins_every_size_and_offset():
    """Each struct's size and each field's offset of §4 has its static assert."""
    text = HEADER.read_text()
    sizes = dict(re.findall(r"sizeof\(struct (pv_iommu_\w+)\) == (\d+)", text))
    offsets = set(re.findall(r"__XEN_PV_IOMMU_AT\((pv_iommu_\w+), ([\w.]+), (\d+),", text))
    assert {k: int(v) for k, v in sizes.items()} == \
        {name: size for name, (size, _) in STRUCTS.items()}
    assert {(s, f, int(o)) for s, f, o in offsets} == \
        {(s, f, off) for s, (_, fields) in STRUCTS.items() for f, (off, _) in fields.items()}
