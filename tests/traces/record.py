"""Record the committed trace corpus: `make traces` (or python tests/traces/record.py [NAME...]).

Each scenario of tests/scenarios.py runs against a fresh `xenemu serve
--record`, then the trace is replayed once to prove it. Large traces are
stored xz-compressed (xenemu reads plain, gzip and xz traces).
"""

from __future__ import annotations

import lzma
import shutil
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

import scenarios  # noqa: E402
from support import BUILD, DaemonProcess, assert_replays  # noqa: E402

COMPRESS_ABOVE = 256 * 1024


def record(name: str) -> Path:
    scenario, kwargs = scenarios.CORPUS[name]
    with tempfile.TemporaryDirectory() as tmp:
        d = DaemonProcess(Path(tmp), *getattr(scenario, "SERVE_ARGS", ()))
        try:
            scenario(d, BUILD, **kwargs)
        finally:
            assert d.stop() == 0, d.log()
        for old in HERE.glob(f"{name}.xt*"):
            old.unlink()
        if d.trace.stat().st_size > COMPRESS_ABOVE:
            out = HERE / f"{name}.xt.xz"
            with open(d.trace, "rb") as src, lzma.open(out, "wb", preset=9) as dst:
                shutil.copyfileobj(src, dst)
        else:
            out = HERE / f"{name}.xt"
            shutil.copyfile(d.trace, out)
    r = assert_replays(out)
    print(f"{out.name}: {r.records:,} records, {out.stat().st_size:,} bytes")
    return out


if __name__ == "__main__":
    for name in sys.argv[1:] or scenarios.CORPUS:
        record(name)
