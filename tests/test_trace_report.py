"""`xenemu trace report` and `xenemu replay --report DIR`: HTML pages of traces.

Through the CLI: a page of one corpus trace, of the whole corpus, of a replay
that diverged, and bad input. One test renders a page in a real headless
Chromium (Debian's, `make browser`) and reads what it shows from the DOM the
browser built; it skips, saying why, where there is none. With
XENEMU_REPORT_SCREENSHOT set it also leaves its screenshot there (the
README's, `make docs/trace-report.png`).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from support import ROOT
from test_traces import flip, is_subop, load, number_of, save, xenemu
from xenemu import abi, wire
from xenemu.errno import XenErrno as E
from xenemu.trace import digest, report

TRACES = ROOT / "tests" / "traces"
CHROMIUM = Path(os.environ.get("XENEMU_CHROMIUM", "/usr/bin/chromium"))


def page_outside_plotly(html: str) -> str:
    """The page less plotly.js (whose source names map tile servers it never
    asks here): what the report itself put in it."""
    start = html.index('<script type="text/javascript">')
    end = html.index("</script>", start)
    return html[:start] + html[end:]


def diverged_trace(tmp_path: Path) -> tuple[Path, int]:
    """error-paths.xt with one reply edited, as test_traces does: the
    recorded -EADDRINUSE of a map_pages becomes -EADDRNOTAVAIL."""
    header, records = load(TRACES / "error-paths.xt")
    n = number_of(records, lambda r: is_subop(r, abi.IOMMUOP_map_pages, -E.EADDRINUSE))
    records[n - 1]["rep"] = flip(records[n - 1]["rep"], wire.HDR_SIZE, 0x03)
    return save(tmp_path / "edited.xt", header, records), n


def test_a_report_of_a_corpus_trace(tmp_path):
    out = tmp_path / "report.html"
    r = xenemu("trace", "report", str(TRACES / "error-paths.xt"), "-o", str(out))
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(f"{out}: ") and "1 trace(s)" in r.stdout
    html = out.read_text()
    own = page_outside_plotly(html)
    # Self-contained: plotly.js inline, nothing fetched (and a policy forbidding it).
    assert "Plotly.newPlot" in html and "plotly.js" in html
    assert "default-src 'none'" in own
    assert not re.search(r"(src|href)\s*=\s*[\"']?(https?:)?//", own)
    assert own.count('class="plotly-graph-div"') == 4
    # What the trace holds: its domains, results per sub-op, refused frames.
    assert "d0 dom0" in own and "d1 guest1" in own
    assert "31 records over" in own and "28 hypercalls (21 failed)" in own
    assert re.search(r"<td>map_pages</td><td class=\"num\">7</td><td>[^<]*-EADDRINUSE: 1", own)
    assert "BAD_MAGIC on 18 bytes" in own


def test_a_report_of_the_whole_corpus_bounds_the_large_trace(tmp_path):
    out = tmp_path / "corpus.html"
    traces = sorted(TRACES.glob("*.xt*"))
    r = xenemu("trace", "report", *map(str, traces), "-o", str(out))
    assert r.returncode == 0, r.stderr
    own = page_outside_plotly(out.read_text())
    for t in traces:          # an overview row and a section each
        assert f'>{t}</a></td>' in own and f">{t}</h2>" in own
    # 110,009 hypercalls: the timeline holds at most MAX_TIMELINE_POINTS successful
    # calls and MAX_ERROR_POINTS failed ones, and says how it thinned them.
    assert "110,069 records" in own and "(21,814 failed)" in own
    assert re.search(r"calls \(1 in \d+ shown\)", own) and re.search(r"errors \(1 in \d+ shown\)",
                                                                       own)
    assert "(bins of 102.4 ms)" in own      # 14 s of calls in at most 200 bins
    assert out.stat().st_size < 4_900_000 + len(traces) * 1_000_000
    # Continuations, control requests: continued-free and machine-changes.
    assert re.search(r"<td>free_context</td><td class=\"num\">\d+</td>", own)
    assert "<td>domain_create</td>" in own and "d7 hotplug" in own


def test_the_busiest_domains_are_drawn_apart_the_rest_as_one(tmp_path):
    header, records = load(TRACES / "error-paths.xt")
    for i, rec in enumerate(records):
        if "d" in rec:
            rec["d"] = 100 + i          # 31 domains, one record each
    out = tmp_path / "r.html"
    r = xenemu("trace", "report", str(save(tmp_path / "many.xt", header, records)), "-o",
               str(out))
    assert r.returncode == 0, r.stderr
    own = page_outside_plotly(out.read_text())
    ticks = re.search(r'"ticktext":\[([^\]]*)\]', own).group(1).split(",")
    assert len(ticks) == digest.MAX_DOMAIN_ROWS + 1 and ticks[0] == '"other domains"'
    assert '"name":"other domains: all"' in own


def test_thinning_keeps_a_bounded_even_sample():
    t = digest.Thinned(100)
    for i in range(100_000):
        t.add(i)
    assert t.seen == 100_000 and 50 <= len(t.items) <= 100
    gaps = {b - a for a, b in zip(t.items, t.items[1:])}
    assert gaps == {t.stride} and t.items[0] == 0


def test_the_rate_keeps_a_bounded_number_of_bins_and_every_call():
    rate = digest.Rate(bins=50, width=0.001)
    for i in range(10_000):
        rate.add(5.0 + i * 0.01, i % 3, i % 7 == 0)
    assert all(len(series) <= 50 for series in rate.counts.values())
    assert rate.width == 0.001 * 2 ** 11             # 100 s of calls in 50 bins of 2.048 s
    assert sum(ok + bad for s in rate.counts.values() for ok, bad in s) == 10_000
    assert sum(bad for s in rate.counts.values() for _, bad in s) == len(range(0, 10_000, 7))


@pytest.mark.parametrize("jobs", ["1", "2"])
def test_replay_report_writes_a_page_for_each_trace_that_diverged(tmp_path, jobs):
    edited, n = diverged_trace(tmp_path)
    reports = tmp_path / "reports" / "nested"
    r = xenemu("replay", "-j", jobs, "--report", str(reports), str(edited),
               str(TRACES / "linux-driver.xt"))
    assert r.returncode == 1, r.stdout + r.stderr          # as without --report
    page = reports / "edited.xt.html"
    assert f"report: {page}" in r.stdout
    assert sorted(p.name for p in reports.iterdir()) == ["edited.xt.html"]
    own = page_outside_plotly(page.read_text())
    assert f"Divergence at record {n}" in own
    # The differing field, expected and actual side by side, marked.
    assert ('<tr class="differs"><td>ret</td><td>-EADDRNOTAVAIL</td><td>-EADDRINUSE</td></tr>'
            in own)
    assert "<tr><td>dfn</td><td>0x20f</td><td>0x20f</td></tr>" in own
    assert "<tr><td>subop_id</td><td>map_pages (5)</td></tr>" in own      # the request
    assert '"name":"divergence"' in own                                 # on the timeline


def test_replay_report_of_a_control_divergence(tmp_path):
    header, records = load(TRACES / "machine-changes.xt")
    n = number_of(records, lambda r: r["k"] == "ctl" and r["req"]["op"] == "dma"
                  and r["rep"].get("data"))
    records[n - 1]["rep"]["data"] = b"from the GUEST"
    edited = save(tmp_path / "control.xt", header, records)
    r = xenemu("replay", "--keep-going", "--report", str(tmp_path), str(edited))
    assert r.returncode == 1
    own = page_outside_plotly((tmp_path / "control.xt.html").read_text())
    assert f"Divergence at record {n}" in own
    assert re.search(r'<tr class="differs"><td>data</td><td>66 72 6f 6d 20 74 68 65 20 47 55',
                     own)
    # Starred on the timeline, in the control requests' row.
    star = re.search(r'"name":"divergence","x":\[[^\]]*\],"y":\[([^\]]*)\]', own)
    ticks = re.search(r'"ticktext":\[([^\]]*)\]', own).group(1).split(",")
    assert star and ticks[int(float(star.group(1)))] == '"control"'



def test_trace_names_are_escaped(tmp_path):
    header, records = load(TRACES / "machine-changes.xt")
    hostile = "</script><script>alert(1)</script><b>"
    for rec in records:
        if rec["k"] == "ctl" and rec["req"]["op"] == "domain_create":
            rec["req"]["name"] = hostile
    header["machine"]["domain"][1]["name"] = "<i>guest</i>"
    out = tmp_path / "r.html"
    r = xenemu("trace", "report", str(save(tmp_path / "h.xt", header, records)), "-o", str(out))
    assert r.returncode == 0, r.stderr
    html = out.read_text()
    assert hostile not in html and "<i>guest</i>" not in html
    assert "&lt;/script&gt;&lt;script&gt;alert(1)" in html


def test_bad_input_is_one_line_and_no_page(tmp_path):
    out = tmp_path / "r.html"
    not_a_trace = tmp_path / "notes.txt"
    not_a_trace.write_text("hello")
    header, records = load(TRACES / "error-paths.xt")
    records[11]["req"] = 5
    bad = save(tmp_path / "bad.xt", header, records)
    cases = [
        ([str(not_a_trace)], f"xenemu: {not_a_trace}: not a xenemu trace"),
        ([str(tmp_path / "missing.xt")], f"xenemu: {tmp_path / 'missing.xt'}: No such file"),
        ([str(TRACES / "linux-driver.xt"), str(bad)],
         f"xenemu: {bad}: record 12: req: expected bytes, got int"),
        ([str(TRACES / "linux-driver.xt")] * (report.MAX_TRACES + 1),
         f"xenemu: {report.MAX_TRACES + 1} traces: a page holds at most {report.MAX_TRACES}"),
    ]
    for files, line in cases:
        r = xenemu("trace", "report", *files, "-o", str(out))
        assert r.returncode == 2 and r.stderr.startswith(line), r.stderr
        assert r.stderr.count("\n") == 1 and "Traceback" not in r.stderr
        assert not out.exists() and list(tmp_path.glob(".*tmp")) == []
    r = xenemu("trace", "report", str(TRACES / "linux-driver.xt"), "-o",
               str(tmp_path / "no" / "r.html"))
    assert r.returncode == 2 and r.stderr == \
        f"xenemu: cannot write {tmp_path / 'no' / 'r.html'}: no directory {tmp_path / 'no'}\n"
    # --report's directory is checked before replaying anything.
    r = xenemu("replay", "--report", str(not_a_trace), str(TRACES / "linux-driver.xt"))
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.startswith(f"xenemu: --report {not_a_trace}: ") and \
        r.stderr.count("\n") == 1


# -- in a real browser -------------------------------------------------------------------

@pytest.fixture(scope="module")
def chromium() -> Path:
    if not os.access(CHROMIUM, os.X_OK):
        pytest.skip(f"no browser: {CHROMIUM} is not there (`make browser` installs Debian's "
                    f"chromium where it runs as root with apt-get; XENEMU_CHROMIUM names "
                    f"another)")
    return CHROMIUM


def headless(chromium: Path, profile: Path, *args: str) -> subprocess.CompletedProcess:
    """Chromium, headless, with a new empty profile and nothing of its own on
    the network; scripts get 20 s of virtual time to draw the plots."""
    profile.mkdir()
    return subprocess.run(
        [str(chromium), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
         "--no-first-run", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", f"--user-data-dir={profile}", "--hide-scrollbars",
         "--virtual-time-budget=20000", *args],
        capture_output=True, text=True, timeout=240)


def test_a_diverged_replay_report_renders_in_a_browser(chromium, tmp_path):
    edited, n = diverged_trace(tmp_path)
    # Run where the trace is, so that the page (and the README's screenshot)
    # names it as a user would.
    r = subprocess.run([sys.executable, "-m", "xenemu.cli", "replay", "--report", "reports",
                        edited.name], capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert r.returncode == 1, r.stderr
    page = tmp_path / "reports" / "edited.xt.html"

    out = headless(chromium, tmp_path / "profile1", "--dump-dom", page.as_uri())
    dom = out.stdout
    assert out.returncode == 0 and "</html>" in dom, out.stderr[-2000:]
    # plotly drew its four plots as SVG: points on the timeline, bars, lines.
    assert dom.count('class="main-svg"') >= 8, "plotly did not draw"
    assert dom.count('class="point"') >= 28 + 11
    assert 'class="scatterlayer' in dom and 'class="barlayer' in dom and 'class="js-line"' in dom
    # The domains as the timeline's axis labels, drawn by plotly.
    ticks = re.findall(r'<g class="ytick">.*?<text[^>]*>([^<]*)</text>', dom)
    assert {"d0 dom0", "d1 guest1"} <= set(ticks), ticks
    # The divergence: expected and actual side by side, the difference marked.
    assert re.search(r'<tr class="differs"><td>ret</td><td>-EADDRNOTAVAIL</td>'
                     r'<td>-EADDRINUSE</td></tr>', dom)
    assert f"Divergence at record {n}" in dom

    shot = Path(os.environ.get("XENEMU_REPORT_SCREENSHOT", tmp_path / "report.png"))
    out = headless(chromium, tmp_path / "profile2", f"--screenshot={shot}",
                   "--window-size=1280,1500", page.as_uri())
    assert out.returncode == 0, out.stderr[-2000:]
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 50_000
