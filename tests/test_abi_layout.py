"""The C headers in abi/ and the construct layouts in xenemu/ must agree byte
for byte, both ways: C builds and Python parses, Python builds and C reads."""

from __future__ import annotations

import subprocess

import pytest

from support import ROOT, compile_c
from xenemu import abi, wire

HEADERS = ["xen/xen.h", "xen/physdev.h", "xen/errno.h", "xen/pv-iommu.h", "xenemu/wire.h",
           "xenemu_client.h"]


@pytest.fixture(scope="module")
def abi_dump(tmp_path_factory):
    return compile_c(ROOT / "tests" / "c" / "abi_dump.c", tmp_path_factory.mktemp("c") / "abi_dump")


def run(prog, *args, stdin=None) -> str:
    return subprocess.run([str(prog), *args], input=stdin, capture_output=True, text=True,
                          check=True).stdout


@pytest.mark.parametrize("compiler,std", [("gcc", "-std=c99"), ("gcc", "-std=c11"),
                                          ("g++", "-std=c++11"), ("g++", "-std=c++17")])
def test_headers_compile_cleanly(tmp_path, compiler, std):
    ext = "cpp" if compiler == "g++" else "c"
    src = tmp_path / f"all.{ext}"
    src.write_text("".join(f"#include <{h}>\n" for h in HEADERS) + "int main(void) { return 0; }\n")
    subprocess.run([compiler, std, "-Wall", "-Wextra", "-Werror", "-pedantic",
                    f"-I{ROOT / 'abi'}", f"-I{ROOT / 'clients' / 'c'}", "-c", str(src),
                    "-o", str(tmp_path / "all.o")], check=True)


def test_static_asserts_catch_a_wrong_layout(tmp_path):
    """The header's asserts are live: a struct laid out differently fails the build."""
    hdr = (ROOT / "abi" / "xen" / "pv-iommu.h").read_text()
    broken = tmp_path / "xen"
    broken.mkdir()
    for name in ("xen.h", "physdev.h"):
        (broken / name).write_text((ROOT / "abi" / "xen" / name).read_text())
    (broken / "pv-iommu.h").write_text(hdr.replace("uint16_t ctx_no;", "uint32_t ctx_no;", 1))
    src = tmp_path / "t.c"
    src.write_text("#include <xen/pv-iommu.h>\nint main(void) { return 0; }\n")
    result = subprocess.run(["gcc", "-std=c11", f"-I{tmp_path}", "-c", str(src), "-o",
                             str(tmp_path / "t.o")], capture_output=True, text=True)
    assert result.returncode != 0
    assert "op_size" in result.stderr or "ctx_no" in result.stderr


def _marker(size: int) -> int:
    return (1 << (8 * size)) - 1


def _python_bytes(struct: str, field: str, size: int) -> bytes:
    """The struct as Python builds it with `field` all ones and the rest zero."""
    m = _marker(size)
    if struct == "pv_iommu_op":
        if field in ("subop_id", "ctx_no", "flags"):
            kw = dict(subop_id=0, ctx_no=0, flags=0, payload=bytes(24))
            kw[field] = m
            return abi.PvIommuOp.build(kw)
        view, _, name = field.partition(".")
        if name.startswith("dev."):
            return abi.encode_op(0, 0, 0, view, dev={name[4:]: m})
        return abi.encode_op(0, 0, 0, view, **{name: m})
    if struct == "xenemu_frame_hdr":
        kw = dict(magic=0, version=0, type=0, length=0, nr_regions=0, reserved=0, req_id=0)
        kw[field] = m
        return wire.Header.build(kw)
    zero_hdr = dict(magic=0, version=0, type=0, length=0, nr_regions=0, reserved=0, req_id=0)
    if struct == "xenemu_call":
        kw = dict(header=zero_hdr, op=0, args=[0] * 5)
        kw[field] = [_marker(8)] * 5 if field == "args" else m
        return wire.CallFixed.build(kw)[wire.HDR_SIZE:]
    if struct == "xenemu_reply":
        return wire.ReplyFixed.build(dict(header=zero_hdr, ret=-1))[wire.HDR_SIZE:]
    if struct == "xenemu_error":
        kw = dict(header=zero_hdr, code=0, msg_len=0, message=b"")
        kw[field] = m
        if field == "msg_len":  # the message length follows msg_len: build the fixed part only
            return wire.ErrorFrame.build(dict(kw, msg_len=0))[wire.HDR_SIZE:wire.HDR_SIZE + 4] + \
                m.to_bytes(4, "little")
        return wire.ErrorFrame.build(kw)[wire.HDR_SIZE:]
    if struct == "xenemu_region":
        kw = dict(gaddr=0, len=0, reserved=0)
        kw[field] = m
        return wire.RegionDescriptor.build(kw)
    raise AssertionError(f"no Python layout for {struct}")


def test_every_field_sits_where_c_puts_it(abi_dump):
    sizes = {}
    fields = []
    for line in run(abi_dump, "layout").splitlines():
        name, offset, size = line.split()
        if "." not in name:
            sizes[name] = int(size)
        else:
            struct, field = name.split(".", 1)
            fields.append((struct, field, int(offset), int(size)))
    assert sizes == {"pv_iommu_op": abi.OP_SIZE, "xenemu_frame_hdr": wire.HDR_SIZE,
                     "xenemu_call": wire.CALL_SIZE, "xenemu_reply": wire.REPLY_SIZE,
                     "xenemu_error": wire.ERROR_SIZE, "xenemu_region": wire.REGION_SIZE}
    assert len(fields) == 33
    for struct, field, offset, size in fields:
        got = _python_bytes(struct, field, size)
        want = bytearray(sizes[struct])
        want[offset:offset + size] = b"\xff" * size
        assert got == bytes(want), f"{struct}.{field}: Python layout differs from C"


def _c_read(abi_dump, raws: list[bytes]) -> list[dict]:
    out = run(abi_dump, "read", stdin="".join(r.hex() + "\n" for r in raws))
    return [dict(kv.split("=") for kv in line.split()) for line in out.splitlines()]


def _flatten(op) -> dict:
    flat = {"subop_id": op.subop_id, "ctx_no": op.ctx_no, "flags": op.flags}
    for view in abi.VIEWS:
        for key, value in op[view].items():
            if key.startswith("_"):
                continue
            if key == "dev":
                for k, v in value.items():
                    if not k.startswith("_"):
                        flat[f"{view}.dev.{k}"] = v
            else:
                flat[f"{view}.{key}"] = value
    return flat


def test_c_builds_python_parses(abi_dump):
    frames = [line.split() for line in run(abi_dump, "frames").splitlines()]
    assert [int(s) for s, _ in frames] == list(range(8))
    raws = [bytes.fromhex(h) for _, h in frames]
    by_subop = {int(s): abi.decode_op(r) for (s, _), r in zip(frames, raws)}
    assert by_subop[1].cap == dict(by_subop[1].cap, max_ctx_no=0x1234, max_nr_pages=0x89ABCDEF,
                                   max_iova_addr=0x7FFFFFFFFF)
    assert (by_subop[2].ctx_no, by_subop[2].flags) == (0xBEEF, abi.IOMMU_CREATE_clone)
    assert (by_subop[3].ctx_no, by_subop[3].flags) == (7, abi.IOMMU_TEARDOWN_REATTACH_DEFAULT)
    dev = by_subop[4].reattach_device.dev
    assert (by_subop[4].ctx_no, dev.seg, dev.bus, dev.devfn) == (3, 0xABCD, 0x42, 0x1F)
    m = by_subop[5].map_pages
    assert (by_subop[5].flags, m.gfn, m.dfn, m.nr_pages, m.mapped) == \
        (3, 0x0102030405060708, 0x1112131415161718, 256, 0xA5A5A5A5)
    u = by_subop[6].unmap_pages
    assert (by_subop[6].ctx_no, u.dfn, u.nr_pages, u.unmapped) == (0xFFFF, 0xFEDCBA9876543210, 17, 5)
    lk = by_subop[7].lookup_page
    assert (lk.gfn, lk.dfn) == (0x123456789, 0x987654321)
    # Every view of every frame reads the same in C and in Python.
    for raw, c_fields in zip(raws, _c_read(abi_dump, raws)):
        assert {k: str(v) for k, v in _flatten(abi.decode_op(raw)).items()} == c_fields


def test_python_builds_c_reads(abi_dump):
    ops = [
        abi.encode_op(abi.IOMMUOP_noop),
        abi.encode_op(abi.IOMMUOP_query_capabilities, view="cap", max_ctx_no=128,
                      max_nr_pages=256, max_iova_addr=(1 << 39) - 1),
        abi.encode_op(abi.IOMMUOP_alloc_context, 0, abi.IOMMU_CREATE_clone),
        abi.encode_op(abi.IOMMUOP_free_context, 9, abi.IOMMU_TEARDOWN_REATTACH_DEFAULT),
        abi.encode_op(abi.IOMMUOP_reattach_device, 4, 0, "reattach_device",
                      dev=dict(seg=1, bus=0x80, devfn=0xF8)),
        abi.encode_op(abi.IOMMUOP_map_pages, 2, 3, "map_pages", gfn=(1 << 64) - 1, dfn=1 << 40,
                      nr_pages=0xFFFFFFFF, mapped=77),
        abi.encode_op(abi.IOMMUOP_unmap_pages, 3, 0, "unmap_pages", dfn=5, nr_pages=6, unmapped=7),
        abi.encode_op(abi.IOMMUOP_lookup_page, 1, 0, "lookup_page", gfn=8, dfn=9),
    ]
    for raw, c_fields in zip(ops, _c_read(abi_dump, ops), strict=True):
        assert {k: str(v) for k, v in _flatten(abi.decode_op(raw)).items()} == c_fields
    c = _c_read(abi_dump, ops)
    assert c[4]["reattach_device.dev.bus"] == "128" and c[4]["reattach_device.dev.devfn"] == "248"
    assert c[5]["map_pages.gfn"] == str((1 << 64) - 1) and c[5]["map_pages.mapped"] == "77"


def test_xen_errno_values_match_the_header():
    from xenemu.errno import XenErrno
    text = (ROOT / "abi" / "xen" / "errno.h").read_text()
    header = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 3 and parts[0] == "#define" and parts[1].startswith("XEN_E"):
            header[parts[1][4:]] = int(parts[2])
    python = {e.name: e.value for e in XenErrno}
    aliases = {"EWOULDBLOCK", "EDEADLOCK"}
    assert {k: v for k, v in header.items() if k not in aliases} == python


def test_wire_error_codes_match_the_header():
    from xenemu import wire
    header = {}
    for line in (ROOT / "abi" / "xenemu" / "wire.h").read_text().splitlines():
        parts = line.split()
        if len(parts) >= 3 and parts[0] == "#define" and parts[1].startswith("XENEMU_ERR_"):
            header[parts[1][len("XENEMU_ERR_"):]] = int(parts[2].rstrip("u"))
    assert header == {name: code for code, name in wire.ERROR_NAMES.items()}
