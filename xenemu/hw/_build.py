"""cffi build script for the C layer (cext/*.c -> xenemu.hw._hwlib): the
simulated hardware (cext/hw.h), the trace record packer (cext/tracepack.h)
and the domains' p2m runs (cext/p2m.h).

The declarations are not written here: they are the part of each public
header between the "BEGIN cffi public" and "END cffi public" marks, so a
change to the C layer touches its header alone. cffi's parser reads declarations, not the
preprocessor, so `cdef_from_header` makes one change to that text: each
`#define NAME value` becomes `#define NAME ...`, and cffi takes the value
from the compiler (the header may then write constants as C expressions,
`(1ULL << 40)` or `UINT64_MAX`). Any other preprocessor line, a function
body or a line continuation in the marked part is refused with its line
number, as cffi would misread it. Structs are declared whole, so cffi checks
their layout against the compiler's at build time.
"""
import re
from pathlib import Path

from cffi import FFI

ROOT = Path(__file__).resolve().parents[2]
CEXT = ROOT / "cext"
# The public headers, in the order their declarations reach cffi.
HEADERS = [CEXT / "hw.h", CEXT / "tracepack.h", CEXT / "p2m.h", CEXT / "fastpath.h"]
BEGIN = "/* BEGIN cffi public */"
END = "/* END cffi public */"

_DEFINE = re.compile(r"#\s*define\s+([A-Za-z_]\w*)\s+\S.*$")
_REFUSED = re.compile(r"^\s*#|\\$|\b(static|inline)\b|\{\s*$")


def cdef_from_header(text: str, name: str = "hw.h") -> str:
    """The cdef for the marked public part of a header (see the module doc)."""
    if text.count(BEGIN) != 1 or text.count(END) != 1:
        raise ValueError(f"{name}: needs exactly one {BEGIN!r} and one {END!r}")
    first = text[:text.index(BEGIN)].count("\n") + 1
    body = text[text.index(BEGIN) + len(BEGIN):text.index(END)]
    # Comments out, their newlines kept so that errors name the right line.
    body = re.sub(r"/\*.*?\*/|//[^\n]*", lambda c: "\n" * c[0].count("\n"),
                  body, flags=re.S)
    out = []
    for number, line in enumerate(body.split("\n"), start=first):
        define = _DEFINE.match(line.strip())
        if define and not line.endswith("\\"):
            out.append(f"#define {define[1]} ...")
            continue
        # An opening brace ending a line is a function body unless a struct
        # or enum opens there.
        if _REFUSED.search(line) and not re.search(r"\b(struct|enum)\b", line):
            raise ValueError(f"{name}:{number}: cffi cannot read this in the "
                             f"public part (move it to an internal header): {line.strip()}")
        out.append(line)
    return "\n".join(out)


ffibuilder = FFI()
ffibuilder.cdef("\n".join(cdef_from_header(h.read_text(), h.name) for h in HEADERS))
# Paths relative to the project root, where setup.py runs the build.
ffibuilder.set_source(
    "xenemu.hw._hwlib",
    "\n".join(f'#include "{h.name}"' for h in HEADERS),
    sources=sorted(str(p.relative_to(ROOT)) for p in CEXT.glob("*.c")),
    include_dirs=["cext"],
    extra_compile_args=["-std=c99", "-O2", "-Wall", "-Wextra", "-Werror"],
)

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
