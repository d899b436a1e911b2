"""A trace report: one self-contained HTML page for one trace or several
(`xenemu trace report`, `xenemu replay --report DIR`).

The page holds everything it shows: its styles, its data and plotly.js
(inlined once, ~4.8 MB), so that a CI artifact opens anywhere, offline; a
Content-Security-Policy forbids it any fetch. Plots are plotly's (SVG, with
zoom and hover): the timeline of hypercalls per domain with errors marked,
the pages each context holds mapped over time, results per sub-op. Tables
list continued calls, control requests, refused frames and hazards; for a
replay that failed, each divergence's request and its reply fields expected
and actual side by side. Everything from the trace is escaped: a trace is
input like any other. What a trace contributes is bounded (xenemu.trace.digest).
"""

from __future__ import annotations

import html
from dataclasses import dataclass
from pathlib import Path

from .. import __version__
from .digest import MAX_TABLE_ROWS, OTHERS, Digest, Point
from .replay import ReplayResult

MAX_TRACES = 32                 # traces on one page (each up to ~1 MB of data)
MAX_DIVERGENCE_TABLES = 20      # divergences shown field by field (the rest as summaries)

# No fetch of any kind: scripts and styles only from the page itself.
_CSP = ("default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
        "img-src data:; font-src data:")

_STYLE = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 1.5em auto; max-width: 1200px;
       padding: 0 1em; color: #222; }
h1 { font-size: 1.5em; } h2 { font-size: 1.3em; border-bottom: 1px solid #ccc; margin-top: 2em; }
h3 { font-size: 1.1em; margin-top: 1.5em; }
table { border-collapse: collapse; margin: .5em 0; font-size: 13px; }
th, td { border: 1px solid #ddd; padding: 2px 8px; text-align: left; vertical-align: top; }
th { background: #f4f4f4; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
code, td.mono, pre { font-family: ui-monospace, monospace; }
tr.differs td { background: #fde2e1; } tr.differs td.field { font-weight: bold; }
tr.refused td { color: #a40000; }
.status { padding: .5em 1em; border-radius: 4px; margin: .5em 0; }
.status.failed { background: #fde2e1; border: 1px solid #e0a0a0; }
.status.ok { background: #e3f6e3; border: 1px solid #a0d0a0; }
.note { color: #666; font-size: 12px; }
pre { background: #f8f8f8; padding: .5em; overflow-x: auto; font-size: 12px; }
"""

_OK, _ERROR, _DIVERGENCE = "#4c78a8", "#d62728", "#9467bd"
_SUCCESS = "#54a24b"            # a result of 0; errors take the colours below, none green
_ERRORS = ["#d62728", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
           "#17becf", "#1f77b4", "#f7b6d2", "#c49c94", "#dbdb8d"]


@dataclass
class Part:
    """One trace's section: what it holds, and its replay if it was replayed."""
    digest: Digest
    replay: ReplayResult | None = None
    summary: str = ""           # the replay's one-line summary


def _e(value) -> str:
    return html.escape(str(value), quote=True)


def _table(head: list[str], rows, numeric: frozenset[int] = frozenset(),
           row_class=None) -> str:
    out = ["<table><tr>", *(f"<th>{_e(h)}</th>" for h in head), "</tr>"]
    for row in rows:
        cls = row_class(row) if row_class else ""
        out.append(f'<tr class="{cls}">' if cls else "<tr>")
        out += [f'<td class="num">{_e(v)}</td>' if i in numeric else f"<td>{_e(v)}</td>"
                for i, v in enumerate(row)]
        out.append("</tr>")
    out.append("</table>")
    return "".join(out)


def _more(shown: int, total: int, what: str) -> str:
    return (f'<p class="note">the first {shown:,} of {total:,} {what} '
            f'(a page shows at most {MAX_TABLE_ROWS})</p>') if total > shown else ""


def _figure(fig, title: str) -> str:
    fig.update_layout(title=title, template="simple_white", margin=dict(l=10, r=10, t=40, b=40),
                      font=dict(family="system-ui, sans-serif", size=12))
    return fig.to_html(full_html=False, include_plotlyjs=False,
                       config={"displaylogo": False, "responsive": True})


# -- plots ------------------------------------------------------------------------

def _timeline(dg: Digest, marks: list[Point]) -> str:
    """Each event a point in its domain's row (control requests in a row of
    their own): successful ones just above the row's line, failed ones just
    below, so that neither hides the other however dense the trace."""
    import plotly.graph_objects as go

    events = [*dg.calls.items, *dg.failures.items, *marks]
    used = {dg.drawn(p.domid) for p in events}
    # Top to bottom: domains, the rest of them as one, control requests.
    rows = sorted(used - {None, OTHERS}) + [OTHERS] * (OTHERS in used) + [None] * (None in used)
    at = {domid: i for i, domid in enumerate(reversed(rows))}
    fig = go.Figure()

    def points(items, name, offset, **marker):
        fig.add_trace(go.Scatter(
            x=[round(p.t, 6) for p in items], y=[at[dg.drawn(p.domid)] + offset for p in items],
            mode="markers", name=name, marker=marker, hoverinfo="text",
            hovertext=[_e(f"#{p.number} t={p.t:.6f} {dg.domain_label(p.domid)} {p.label}")
                       for p in items]))

    def thinned(name, series):
        return name + (f" (1 in {series.stride} shown)" if series.thinned else "")
    points(dg.calls.items, thinned("calls", dg.calls), 0.15, color=_OK, symbol="circle", size=5)
    points(dg.failures.items, thinned("errors", dg.failures), -0.15, color=_ERROR, symbol="x",
           size=8)
    if marks:
        points(marks, "divergence", 0.0, color=_DIVERGENCE, symbol="star", size=16,
               line=dict(width=1, color="black"))
    fig.update_yaxes(tickvals=list(range(len(rows))),
                     ticktext=[_e(dg.domain_label(d)) for d in reversed(rows)],
                     range=[-0.6, len(rows) - 0.4], showgrid=True)
    fig.update_xaxes(title="time since the machine started (s)")
    fig.update_layout(height=170 + 45 * len(rows), hovermode="closest",
                      legend=dict(orientation="h", y=-0.3 if len(rows) < 4 else -0.1))
    return _figure(fig, "Hypercalls and control requests per domain (errors below each row)")


def _rate(dg: Digest) -> str:
    """Hypercalls per second over time, per domain, and how many of them failed."""
    import plotly.graph_objects as go

    rate = dg.rate
    if not rate.counts:
        return ""
    width, counts = rate.readable()
    drawn: dict[int, list[list[int]]] = {}      # the busiest domains, and the rest as one
    for domid, series in counts.items():
        total = drawn.setdefault(dg.drawn(domid), [])
        total += [[0, 0] for _ in range(len(series) - len(total))]
        for k, (ok, bad) in enumerate(series):
            total[k][0] += ok
            total[k][1] += bad
    fig = go.Figure()
    for i, (domid, series) in enumerate(sorted(drawn.items())):
        color = _ERRORS[(i + 8) % len(_ERRORS)]
        x = [round(rate.origin + (k + 0.5) * width, 6) for k in range(len(series))]
        label = _e(dg.domain_label(domid))
        fig.add_trace(go.Scatter(x=x, y=[(ok + bad) / width for ok, bad in series],
                                 mode="lines", line_shape="hvh", name=f"{label}: all",
                                 line=dict(color=color)))
        fig.add_trace(go.Scatter(x=x, y=[bad / width for _, bad in series],
                                 mode="lines", line_shape="hvh", name=f"{label}: failed",
                                 line=dict(color=color, dash="dot")))
    fig.update_xaxes(title="time since the machine started (s)")
    fig.update_yaxes(title=f"hypercalls/s (bins of {width * 1000:g} ms)",
                     rangemode="tozero")
    fig.update_layout(height=320, showlegend=True)
    return _figure(fig, "Hypercalls per second")


def _mapped_pages(dg: Digest) -> str:
    import plotly.graph_objects as go

    lines = dg.context_lines()
    if not lines:
        return '<p class="note">No call of this trace mapped a page.</p>'
    fig = go.Figure()
    for (domid, ctx), series in lines:
        fig.add_trace(go.Scatter(
            x=[round(t, 6) for t, _ in series.items], y=[v for _, v in series.items], mode="lines",
            line_shape="hv", name=_e(f"{dg.domain_label(domid)} ctx {ctx}")))
    fig.update_xaxes(title="time since the machine started (s)")
    fig.update_yaxes(title="pages mapped", rangemode="tozero")
    fig.update_layout(height=360, showlegend=True)
    note = ""
    if len(dg.pages) > len(lines):
        note += (f'<p class="note">{len(lines)} of {len(dg.pages)} contexts drawn: those '
                 f'that mapped the most.</p>')
    if any(s.thinned for _, s in lines):
        note += '<p class="note">Long lines are thinned evenly (at most 1,000 points each).</p>'
    return _figure(fig, "Pages mapped per context (from the recorded replies)") + note


def _results(dg: Digest) -> str:
    import plotly.graph_objects as go

    if not dg.results:
        return '<p class="note">No hypercall in this trace.</p>'
    names = sorted(dg.results)
    outcomes = sorted({r for c in dg.results.values() for r in c}, key=lambda r: (r != "0", r))
    fig = go.Figure()
    for i, outcome in enumerate(outcomes):
        color = _SUCCESS if outcome == "0" else _ERRORS[(i - 1) % len(_ERRORS)]
        fig.add_trace(go.Bar(
            y=names, x=[dg.results[n][outcome] for n in names], orientation="h",
            name=_e(outcome), marker_color=color))
    fig.update_layout(barmode="stack", height=140 + 30 * len(names))
    fig.update_xaxes(title="calls")
    rows = [(n, f"{sum(dg.results[n].values()):,}",
             "  ".join(f"{r}: {k:,}" for r, k in dg.results[n].most_common())) for n in names]
    return _figure(fig, "Results per sub-op") + _table(["sub-op", "calls", "results"], rows,
                                                        numeric=frozenset({1}))


# -- tables -------------------------------------------------------------------------

def _continuations(dg: Digest) -> str:
    b = dg.continued
    if not b.total:
        return '<p class="note">No call continued.</p>'
    rows = [(f"{c.number:,}", dg.domain_label(c.domid), c.name, c.rounds, f"{c.start:.6f}",
             "-" if c.end is None else f"{c.end:.6f}", c.result or "never finished")
            for c in b.rows]
    return _table(["record", "domain", "call", "rounds", "first round (s)", "last round (s)",
                   "result"], rows, numeric=frozenset({0, 3})) + \
        _more(len(b.rows), b.total, "continued calls")


def _control(dg: Digest) -> str:
    b = dg.control
    if not b.total:
        return '<p class="note">No control request recorded.</p>'
    rows = [(n, f"{t:.6f}", op, args, result) for n, t, op, args, result, _ in b.rows]
    return _table(["record", "t (s)", "op", "arguments", "reply"], rows,
                  numeric=frozenset({0}), row_class=lambda r: "" if
                  r[4].startswith("ok") else "refused") + \
        _more(len(b.rows), b.total, "control requests")


def _refused(dg: Digest) -> str:
    b = dg.refused
    if not b.total:
        return '<p class="note">No frame refused, no hazard.</p>'
    rows = [(n, f"{t:.6f}", dom, kind, name, detail) for n, t, dom, kind, name, detail in b.rows]
    return _table(["record", "t (s)", "domain", "kind", "what", "detail"], rows,
                  numeric=frozenset({0})) + _more(len(b.rows), b.total, "refused frames and hazards")


def _replay(part: Part) -> str:
    r = part.replay
    if r is None:
        return ""
    out = ['<h3>Replay</h3>',
           f'<div class="status {"ok" if r.ok else "failed"}">{_e(part.summary)}</div>']
    for i, d in enumerate(r.divergences):
        if i == MAX_DIVERGENCE_TABLES:
            out.append(f'<p class="note">{len(r.divergences) - i} more divergence(s): '
                       f'{"; ".join(_e(x.summary) for x in r.divergences[i:])}</p>')
            break
        out.append(f'<h4 id="divergence-{d.number}">Divergence at record {d.number}</h4>'
                   f'<p><code>{_e(d.summary)}</code></p>')
        if d.request:
            out.append("<p>Request:</p>" + _table(["field", "value"], d.request))
        if d.fields:
            out.append("<p>Reply, expected (recorded) and actual (this xenemu):</p>" +
                       _table(["field", "expected", "actual"], d.fields,
                              row_class=lambda row: "differs" if row[1] != row[2] else ""))
        out.append(f"<details><summary>full report</summary><pre>{_e(d.report)}</pre></details>")
    if r.count > len(r.divergences):
        out.append(f'<p class="note">{r.count:,} divergences in all; the first '
                   f'{len(r.divergences)} are kept.</p>')
    for title, lines in (("Invariant check after the replay", r.problems),
                         ("Hazards (--fail-on-hazard)", r.hazards), ("Notes", r.notes)):
        if lines:
            out.append(f"<p>{title}:</p><pre>{_e(chr(10).join(lines))}</pre>")
    return "".join(out)


def _section(i: int, part: Part) -> str:
    dg = part.digest
    span = dg.last - (dg.first or 0.0)
    marks = [dg.marked[d.number] for d in (part.replay.divergences if part.replay else [])
             if d.number in dg.marked]
    meta = ", ".join(f"{k} {v}" for k, v in dg.meta.items())
    domains = ", ".join(f"{dg.domain_label(d)}" for d in sorted(dg.domains))
    out = [f'<h2 id="trace-{i}">{_e(dg.path)}</h2>',
           f"<p>{dg.records:,} records over {span:.3f} s: {dg.hypercalls:,} hypercalls "
           f"({dg.errors:,} failed), {dg.control.total:,} control requests, "
           f"{dg.continued.total:,} continued calls, {dg.refused.total:,} refused frames and "
           f"hazards. Format {dg.format}, PV-IOMMU revision {dg.revision}. "
           f"Domains: {_e(domains)}.</p>",
           f'<p class="note">{_e(meta)}</p>']
    if dg.cut_off:
        out.append(f'<p class="note">{_e(dg.cut_off)}</p>')
    out += [_replay(part), '<h3>Timeline</h3>', _timeline(dg, marks), _rate(dg),
            '<h3>Mapped pages</h3>', _mapped_pages(dg),
            '<h3>Results</h3>', _results(dg),
            '<h3>Continued calls</h3>', _continuations(dg),
            '<h3>Control requests</h3>', _control(dg),
            '<h3>Refused frames and hazards</h3>', _refused(dg)]
    return "\n".join(out)


def _overview(parts: list[Part]) -> str:
    rows = []
    for i, p in enumerate(parts):
        dg = p.digest
        status = "-" if p.replay is None else ("all matched" if p.replay.ok else
                                               f"failed: {p.replay.count} divergence(s)")
        rows.append((i, dg.path, dg.records, dg.hypercalls, dg.errors, status))
    out = ["<table><tr><th>trace</th><th>records</th><th>hypercalls</th><th>failed</th>"
           "<th>replay</th></tr>"]
    for i, path, records, calls, errors, status in rows:
        out.append(f'<tr><td><a href="#trace-{i}">{_e(path)}</a></td>'
                   f'<td class="num">{records:,}</td><td class="num">{calls:,}</td>'
                   f'<td class="num">{errors:,}</td><td>{_e(status)}</td></tr>')
    out.append("</table>")
    return "".join(out)


def render(parts: list[Part]) -> str:
    """The page, as one string."""
    import plotly
    from plotly.offline import get_plotlyjs

    title = (f"xenemu trace report: {parts[0].digest.path.name}" if len(parts) == 1
             else f"xenemu trace report: {len(parts)} traces")
    body = [f"<h1>{_e(title)}</h1>",
            f'<p class="note">Made by xenemu {_e(__version__)} with plotly '
            f'{_e(plotly.__version__)}; self-contained, it needs no network. Times are the '
            f"machine's, from the trace's records.</p>"]
    if len(parts) > 1:
        body.append(_overview(parts))
    body += [_section(i, p) for i, p in enumerate(parts)]
    return "\n".join([
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        f'<meta http-equiv="Content-Security-Policy" content="{_CSP}">',
        f"<title>{_e(title)}</title><style>{_STYLE}</style>",
        f'<script type="text/javascript">{get_plotlyjs()}</script>',
        "</head><body>", *body, "</body></html>"])


def write(path: Path, parts: list[Part]) -> None:
    """Write the page to `path` (OSError if it cannot be)."""
    path.write_bytes(render(parts).encode())
