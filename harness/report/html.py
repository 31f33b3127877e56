"""report.html: one self-contained page for a run (inline CSS / JS, heatmaps as PNG data URIs).

Sections: header (counts, environment, command, policy), per backend a verdict matrix
(rows: level / check / op / mix, columns: layout x TP; a cell aggregates its cases), a
filterable table of every non-passing case, per failure the metrics table and a heatmap of
each failing token-major output's ``error_map``, and a collapsible list of all cases.

It stays usable for large runs: a passing case appears only in its matrix cell's count
and in the collapsible list (both built from one embedded JSON blob, each id once); only
the first ``HEATMAP_FAILURES`` failures get heatmaps, at most ``MAPS_PER_FAILURE`` each,
identical maps drawn once; images, failure details and the non-passing table each have a
byte budget, and the page says whenever a cap was hit (results.json has everything).
Heatmaps are drawn with matplotlib's Agg canvas (no display, global backend untouched):
one figure, its frame (axes, ticks, colour bar) cached per layout, the image blitted.
"""
from __future__ import annotations

import base64
import hashlib
import html
import io
import json
import math
import re
from collections import Counter, defaultdict
from datetime import datetime, timezone
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from harness.diagnosis.core import hypothesis_lines, signature_lines
from harness.report.results import (STATUSES, atomic_write, counts, environment, filled_ops_by_backend, incomplete_headline,
                     pad_rows_not_compared, pad_rows_sentence, problem_text)

HEATMAP_FAILURES = 200           # failures (in record order) that get heatmaps
MAPS_PER_FAILURE = 8             # heatmaps per failure (failing token-major outputs)
HEATMAP_BUDGET = 5 << 19         # bytes of base64 PNG in the page (2.5 MiB), whatever the run size
FAILURE_TEXT_BUDGET = 2 << 20    # bytes of failure details (without images); later failures: table row only
NONPASSING_BUDGET = 7 << 19      # bytes of the non-passing table (3.5 MiB); later (skipped) cases: results.json only
FULL_TABLES = 200                # failures whose metrics table lists every output (later ones: failing only)
OPEN_DETAILS = 25                # failure sections expanded on load
LEVEL_ORDER = {"self": 0, "op": 1, "layer": 2}
WORST = ("error", "fail", "pass", "skip")      # a cell takes the colour of its worst verdict
SYMBOL = {"pass": "\u2713", "fail": "\u2717", "error": "!", "skip": "\u25cb"}
NONFINITE = 1e300                # error_map stores NaN / Inf as float64 max
OVER_COLOUR = "#00d5ff"          # NaN / Inf bins, and the first-divergent-token marker

esc = html.escape
_IMG_DATA = re.compile(r"data:image/png;base64,[A-Za-z0-9+/=]*")


def write_html(report_dir: Path, records: List[dict], meta: dict) -> Path:
    """Write ``report.html`` into report_dir (atomically) and return its path."""
    path = Path(report_dir) / "report.html"
    atomic_write(path, render_html(records, meta))
    return path


def render_html(records: List[dict], meta: dict) -> str:
    env = meta.get("environment") or environment()
    c = counts(records)
    maps = _Heatmaps()
    failures_html, detailed = _failures(records, maps)
    nonpassing_html, listed = _nonpassing(records, detailed)
    data, matrix_html = _matrices(records, detailed, listed)
    cut = incomplete_headline(records, meta)
    parts = [_HEAD.replace("%TITLE%", esc((cut.split(":")[0] + " - " if cut else "")
                                          + f"gdn-harness: {meta.get('suite', '')} - "
                                          f"{c['fail']} failed, {c['error']} errors")),
             _header(records, meta, env, c),
             _nav(c),
             _what_failed(records, detailed),
             '<section id="matrix"><h2>Verdict matrix</h2>'
             '<p class="muted">Rows: check / op / batch mix; columns: layout &times; TP. A cell aggregates '
             'its cases (dims, dtypes, variants, seeds) and takes the colour of its worst verdict: '
             + "".join(f'<span class="b {s}">{SYMBOL[s]} {s}</span> ' for s in WORST) +
             '. Hover a cell for its case ids, click it for the full list.</p>' + matrix_html + '</section>',
             nonpassing_html,
             failures_html,
             _all_cases(c),
             '<div id="panel" hidden><div class="ph"><b id="ptitle"></b>'
             '<button id="pclose" title="close">&times;</button></div><ol id="plist"></ol></div>',
             '<script type="application/json" id="gdn-data">' + _json_for_script(data) + '</script>',
             "<script>" + _JS + "</script></body></html>\n"]
    return "\n".join(parts)


# ----------------------------------------------------------------------------- header


def _header(records, meta, env, c) -> str:
    verdict = "fail" if c["fail"] or c["error"] or incomplete_headline(records, meta) else ("pass" if c["pass"] else "skip")
    badges = " ".join(f'<span class="big {s}">{c[s]} {lbl}</span>' for s, lbl in
                      (("pass", "passed"), ("fail", "failed"), ("error", "errors"), ("skip", "skipped")))
    rows = [("suite", f"{meta.get('suite', '')} ({meta.get('suite_file', '')})"),
            ("backends", ", ".join(meta.get("backends") or sorted({r['backend'] for r in records}))),
            ("device", meta.get("device", "")),
            ("policy", f"v{meta.get('policy_version', '?')} ({meta.get('policy_file', '')})"),
            ("created", meta.get("created") or datetime.now(timezone.utc).isoformat(timespec="seconds")),
            ("wall", f"{_num(meta.get('wall_s', 0))} s")]
    env_rows = "".join(f"<tr><th>{esc(str(k))}</th><td>{esc(str(v))}</td></tr>" for k, v in env.items())
    notes = "".join(f"<p class='muted'>Filled from the reference at layer level for <code>{esc(b)}</code>: "
                    f"{esc(', '.join(ops))}.</p>" for b, ops in filled_ops_by_backend(records).items())
    notes += "".join(f"<p class='warn'>{esc(pad_rows_sentence(b, e))}.</p>"
                     for b, e in pad_rows_not_compared(records).items())
    cut = incomplete_headline(records, meta)
    banner = ""
    if cut:
        running = [u for u in meta.get("unfinished_cases") or [] if u.get("state") == "running"]
        banner = (f'<div id="incomplete" class="banner">{esc(cut.split("; running:")[0])}.'
                  + "".join(f'<br>Running when it stopped ({_num(u.get("seconds"))} s in): <code>{esc(u["id"])}</code>'
                            for u in running[:10])
                  + ("<br>The cases not run are listed in results.json (<code>unfinished_cases</code>) and in "
                     "junit.xml." if meta.get("unfinished_cases") else "") + "</div>")
    return (f'{banner}<header class="{verdict}"><h1>gdn-harness &middot; suite <code>{esc(str(meta.get("suite", "")))}</code>'
            f'</h1><div class="counts">{badges} <span class="muted">of {c["total"]} cases</span></div>'
            f'<p>Command: <code class="cmd">{esc(str(meta.get("command", "")))}</code></p>'
            '<div class="cols"><table class="kv">'
            + "".join(f"<tr><th>{k}</th><td>{esc(str(v))}</td></tr>" for k, v in rows)
            + f'</table><table class="kv"><caption>environment</caption>{env_rows}</table></div>{notes}</header>')


def _nav(c) -> str:
    return ('<nav><a href="#whatfailed">What failed</a> <a href="#matrix">Matrix</a> <a href="#nonpassing">Non-passing '
            f'({c["fail"] + c["error"] + c["skip"]})</a> <a href="#failures">Failures ({c["fail"] + c["error"]})</a>'
            f' <a href="#all">All cases ({c["total"]})</a></nav>')


# ----------------------------------------------------------------------------- what failed


def failure_key(r: dict) -> tuple:
    """What makes two failures "the same" across layout / TP / dtype / seed variants: backend,
    check, status and the reason - the known fault a diagnosis matched, the kind of a
    structural error, else the failing outputs."""
    top = (r.get("hypotheses") or [None])[0]
    if top and top.get("matched"):
        why = ("fault", str(top.get("hypothesis")))
    elif r.get("structural"):
        err = str(r.get("error") or "")
        why = ("structural", str(r["structural"]), err.split(":", 1)[0] if r["structural"] == "exception" else "")
    else:
        why = ("outputs", tuple(sorted({re.sub(r"^step\d+\.", "", str(m.get("output")))
                                       for m in r.get("metrics") or [] if not m.get("passed", True)})))
    return (r.get("backend"), r.get("level"), r.get("op"), r.get("status"), why)


def _what_failed(records: List[dict], detailed: set) -> str:
    """The first thing on the page: failing checks x backends, each with its diagnosis or error;
    failures identical but for their layout / TP / dtype / seed shown once with the count."""
    groups: Dict[tuple, List[int]] = {}
    for i, r in enumerate(records):
        if r["status"] in ("fail", "error"):
            groups.setdefault(failure_key(r), []).append(i)
    if not groups:
        return ('<section id="whatfailed"><h2>What failed</h2><p class="okline">Nothing: no case failed or '
                'errored.</p></section>')
    order = sorted(groups.items(), key=lambda kv: (kv[0][0] == "reference", kv[0][3] != "error", -len(kv[1]),
                                                     str(kv[0][0]), LEVEL_ORDER.get(kv[0][1], 9), str(kv[0][2])))
    rows = []
    for (backend, level, op, st, _), idx in order:
        first = records[idx[0]]
        spread = []
        for key, fmt in (("layout", str), ("tp", lambda v: f"tp{v}"), ("dtype", str)):
            vals = sorted({str(records[i].get(key)) for i in idx if records[i].get(key) is not None})
            if vals:
                spread.append(", ".join(fmt(v) for v in vals))
        link = f'<a href="#f{idx[0]}">{esc(first["id"])}</a>' if idx[0] in detailed else esc(first["id"])
        rows.append(f'<tr data-s="{st}"><td><span class="b {st}">{st}</span></td><td><code>{esc(str(backend))}</code>'
                    f'</td><td><span class="lvl">{esc(str(level))}</span> {esc(str(op))}</td><td class="cnt">{len(idx)}'
                    f'</td><td class="muted">{esc(" · ".join(spread))}</td><td class="what">'
                    f'{esc(_clip(_clean(problem_text(first)), 360))}<br><small class="muted">e.g. {link}</small>'
                    '</td></tr>')
    n = sum(len(v) for v in groups.values())
    return (f'<section id="whatfailed"><h2>What failed: {n} case(s) in {len(groups)} distinct failure(s)</h2>'
            '<div class="scroll"><table class="wf"><thead><tr><th>status</th><th>backend</th><th>check</th>'
            '<th>cases</th><th>variants</th><th>diagnosis / error (first case)</th></tr></thead><tbody>'
            + "".join(rows) + "</tbody></table></div></section>")


# ----------------------------------------------------------------------------- matrix


def _row_key(r: dict) -> Tuple[int, str, str]:
    return (LEVEL_ORDER.get(r.get("level"), 9), str(r.get("level")), str(r.get("op")))


def _col_key(r: dict) -> Tuple[str, int]:
    tp = r.get("tp")
    layout = str(r.get("layout") or "-")
    if r.get("level") == "op" and not str(r.get("variant") or "").startswith(layout):
        layout = "any layout"            # the op does not depend on the projection layout
    return (layout, tp if isinstance(tp, int) else -1)


def _matrices(records: List[dict], detailed: set, listed: set) -> Tuple[dict, str]:
    """The embedded data (ids once, status letters, margins, anchors, cells) and the matrix HTML."""
    ids = [r["id"] for r in records]
    status = "".join((r["status"] or "?")[0] for r in records)
    margin = [_short(r.get("margin")) for r in records]
    anchors = {i: f"n{i}" for i in listed}
    anchors.update({i: f"f{i}" for i in detailed})
    cells: List[List[int]] = []
    by_backend: Dict[str, Dict[Tuple, Dict[Tuple, List[int]]]] = defaultdict(lambda: defaultdict(dict))
    for i, r in enumerate(records):
        by_backend[r["backend"]][_row_key(r)].setdefault(_col_key(r), []).append(i)
    out = []
    for backend in sorted(by_backend, key=lambda b: (b == "reference", b)):
        rows = by_backend[backend]
        cols = sorted({ck for row in rows.values() for ck in row})
        layouts = []
        for layout, _ in cols:
            if not layouts or layouts[-1][0] != layout:
                layouts.append([layout, 0])
            layouts[-1][1] += 1
        bc = Counter(records[i]["status"] for row in rows.values() for idx in row.values() for i in idx)
        summary = " &middot; ".join(f'<span class="b {s}">{bc.get(s, 0)} {s}</span>' for s in STATUSES)
        head1 = "".join(f'<th colspan="{n}">{esc(lay)}</th>' for lay, n in layouts)
        head2 = "".join(f"<th>tp{tp}</th>" if tp >= 0 else "<th>-</th>" for _, tp in cols)
        body = []
        for rk in sorted(rows):
            tds = []
            for ck in cols:
                idx = rows[rk].get(ck)
                if not idx:
                    tds.append('<td class="n"></td>')
                    continue
                cc = Counter(records[i]["status"] for i in idx)
                worst = next(s for s in WORST if cc.get(s))
                text = " ".join(f"{SYMBOL[s]}{cc[s]}" for s in WORST if cc.get(s))
                tds.append(f'<td class="c {worst}" data-c="{len(cells)}">{text}</td>')
                cells.append(idx)
            body.append(f'<tr><th><span class="lvl">{esc(rk[1])}</span> {esc(rk[2])}</th>{"".join(tds)}</tr>')
        title = "reference (the oracle's self checks)" if backend == "reference" else backend
        out.append(f'<h3><code>{esc(title)}</code> <small>{summary}</small></h3>'
                   f'<div class="scroll"><table class="matrix"><thead><tr><th rowspan="2">level / check</th>{head1}'
                   f'</tr><tr>{head2}</tr></thead><tbody>{"".join(body)}</tbody></table></div>')
    data = dict(ids=ids, st=status, m=margin, a={str(k): v for k, v in anchors.items()}, cells=cells)
    return data, "".join(out) or "<p>No cases.</p>"


# ----------------------------------------------------------------------------- non-passing table


def _nonpassing(records: List[dict], detailed: set) -> Tuple[str, set]:
    """The table of non-passing cases (errors, failures, skips) and the indexes it lists."""
    rows, listed, size = [], set(), 0
    order = {"error": 0, "fail": 1, "skip": 2}
    for i, r in sorted(((i, r) for i, r in enumerate(records) if r["status"] != "pass"),
                       key=lambda ir: (order.get(ir[1]["status"], 3), ir[0])):
        st = r["status"]
        if size > NONPASSING_BUDGET:
            continue
        what = _clean(problem_text(r))
        link = f'<a href="#f{i}">{esc(r["id"])}</a>' if i in detailed else esc(r["id"])
        listed.add(i)
        rows.append(f'<tr id="n{i}" data-s="{st}"><td><span class="b {st}">{st}</span></td><td class="id">{link}'
                    f'</td><td class="what">{esc(_clip(what, 400))}</td><td><code class="cmd">'
                    f'{esc(r.get("repro") or "")}</code></td></tr>')
        size += len(rows[-1])
    if not rows:
        return '<section id="nonpassing"><h2>Non-passing cases</h2><p>None: every case passed.</p></section>', listed
    n_bad = sum(1 for r in records if r["status"] != "pass")
    more = "" if len(listed) == n_bad else (
        f'<p class="warn">The table lists {len(listed)} of {n_bad} non-passing cases (errors and failures first; '
        f'the page keeps at most {NONPASSING_BUDGET / 2**20:g} MiB of it); results.json has them all.</p>')
    boxes = "".join(f'<label><input type="checkbox" class="fs" value="{s}" checked> {s}</label> '
                    for s in ("fail", "error", "skip"))
    return ('<section id="nonpassing"><h2>Non-passing cases</h2><div class="filter">'
            '<input id="q" type="search" placeholder="filter: id, backend, reason ..." size="50"> '
            f'{boxes}<span id="shown" class="muted"></span></div>{more}'
            '<div class="scroll tall"><table class="np"><thead><tr><th>status</th><th>case</th>'
            '<th>diagnosis / error / skip reason</th><th>repro</th></tr></thead><tbody id="npbody">'
            + "\n".join(rows) + "</tbody></table></div></section>"), listed


# ----------------------------------------------------------------------------- failures


def _failures(records: List[dict], maps: "_Heatmaps") -> Tuple[str, set]:
    """Per failure / error: details, metrics, heatmaps (within the budgets); and the indexes it details."""
    bad = [(i, r) for i, r in enumerate(records) if r["status"] in ("fail", "error")]
    if not bad:
        return '<section id="failures"><h2>Failures</h2><p>None.</p></section>', set()
    detailed = set()
    n_fail = sum(1 for _, r in bad if r["status"] == "fail")
    parts = []
    policies: Dict[Tuple[str, str], Tuple[int, dict]] = {}
    nth_fail, text_bytes, brief = 0, 0, 0
    for k, (i, r) in enumerate(bad):
        if r["status"] == "fail":
            nth_fail += 1
        if text_bytes > FAILURE_TEXT_BUDGET:     # the non-passing table has its diagnosis and repro
            brief += 1
            continue
        detailed.add(i)
        part = _failure(i, r, maps, policies, with_maps=r["status"] == "fail" and nth_fail <= HEATMAP_FAILURES,
                        full=k < FULL_TABLES, open_=k < OPEN_DETAILS)
        text_bytes += len(part) - sum(len(m) for m in _IMG_DATA.findall(part))   # images have their own budget
        parts.append(part)
    notes = []
    if n_fail > HEATMAP_FAILURES:
        notes.append(f"Heatmaps are drawn for the first {HEATMAP_FAILURES} of {n_fail} failures only (capped).")
    if maps.over_budget:
        notes.append(f"{maps.over_budget} heatmap(s) omitted: the page keeps at most "
                     f"{HEATMAP_BUDGET / 2**20:g} MiB of images.")
    if brief:
        notes.append(f"The last {brief} failures have no section here, only their row in the non-passing table "
                     "(if listed) "
                     f"(the page keeps at most {FAILURE_TEXT_BUDGET / 2**20:g} MiB of failure details); "
                     "results.json has everything.")
    if maps.capped_per_failure:
        notes.append(f"At most {MAPS_PER_FAILURE} heatmaps per failure: {maps.capped_per_failure} more omitted.")
    if len(bad) > FULL_TABLES:
        notes.append(f"Failures after the first {FULL_TABLES} list only their failing outputs.")
    if maps.unavailable:
        notes.append(f"No heatmaps: {maps.unavailable}.")
    note_html = "".join(f'<p class="warn">{esc(n)}</p>' for n in notes)
    return (f'<section id="failures"><h2>Failures and errors ({len(bad)})</h2>'
            '<p class="muted">Heatmaps: max |diff| of a failing token-major output over token &times; head bins '
            '(log colour scale; white = exactly 0, cyan = NaN / Inf; &#9664; marks the first divergent token).</p>'
            + note_html + "".join(parts) + _policy_table(policies) + "</section>"), detailed


def _policy_table(policies: dict) -> str:
    if not policies:
        return ""
    rows = "".join(f'<tr id="pol{n}"><td><code>{esc(k)}</code></td><td>{esc(str(t.get("kind")))}</td>'
                   f'<td>{esc(_num(t.get("value")))}</td><td>{esc(str(t.get("reason", "")))}</td>'
                   f'<td class="muted">{esc(src)}</td></tr>' for (k, src), (n, t) in policies.items())
    return ('<h3>Tolerance policy entries used above</h3><div class="scroll"><table class="np pol"><thead><tr>'
            '<th>key</th><th>kind</th><th>bound</th><th>reason</th><th>source</th></tr></thead>'
            f'<tbody>{rows}</tbody></table></div>')


_MCOLS = ("output", "shape", "rel_rms", "max |diff|", "at index", "worst token", "first divergent token",
          "tolerance", "margin", "mismatch", "nan/inf")


def _failure(i: int, r: dict, maps: "_Heatmaps", policies: dict, with_maps: bool, full: bool, open_: bool) -> str:
    st = r["status"]
    dims = r.get("dims") or {}
    facts = [r.get("backend"), r.get("level"), dims.get("name"), f"{r.get('layout')} tp{r.get('tp')}",
             f"{r.get('dtype')} / state {r.get('state_dtype')}", r.get("variant") or None,
             f"seed {r.get('seed')}", r.get("device"), f"{_num(r.get('duration_s'))} s"]
    if r.get("filled_ops"):
        facts.append("filled: " + ", ".join(r["filled_ops"]))
    if r.get("pad_rows_not_compared"):
        facts.append("PAD rows not compared: " + ", ".join(r["pad_rows_not_compared"]["outputs"]))
    body = [f'<p class="muted">{esc(" · ".join(str(f) for f in facts if f not in (None, "")))}</p>']
    if st == "error":
        body.append(f'<pre class="err">{esc(_clean(_clip(r.get("error") or "", 2000)))}</pre>')
        for key, label in (("traceback", "traceback"), ("stderr_tail", "stderr of the worker")):
            if r.get(key):
                body.append(f'<details{" open" if open_ else ""}><summary>{label} (tail)</summary><pre class="tb">'
                            f'{esc(_clean(str(r[key])[-3000:]))}</pre></details>')
    else:
        body.append(f'<p class="diag">{esc(r.get("diagnosis") or "")}</p>')
    hyps = hypothesis_lines(r, 5)
    if hyps:
        body.append('<p>fault hypotheses (re-run through the reference, best first):</p><ul class="hyps">'
                    + "".join(f"<li>{esc(h)}</li>" for h in hyps) + "</ul>")
    sigs = signature_lines(r)
    if sigs:
        body.append('<p>localised / structure of the difference:</p><ul class="hyps">'
                    + "".join(f"<li>{esc(h)}</li>" for h in sigs) + "</ul>")
    body.append(f'<p>repro: <code class="cmd">{esc(r.get("repro") or "")}</code></p>')
    metrics = r.get("metrics") or []
    shown = metrics if full else [m for m in metrics if not m.get("passed", True)]
    if shown:
        trs = "".join(_metric_row(m) for m in shown)
        more = "" if len(shown) == len(metrics) else \
            f'<tr><td colspan="{len(_MCOLS)}" class="muted">+ {len(metrics) - len(shown)} outputs within ' \
            'tolerance</td></tr>'
        body.append('<div class="scroll"><table class="metrics"><thead><tr>'
                    + "".join(f"<th>{c}</th>" for c in _MCOLS)
                    + f"</tr></thead><tbody>{trs}{more}</tbody></table></div>")
    if isinstance(r.get("tolerance"), dict):     # policy entries are listed once, after the failures
        used = {n for m in shown if not m.get("passed", True) for n in (m.get("notes") or [])}
        links = []
        for k, t in r["tolerance"].items():
            if k in used and isinstance(t, dict):
                n = policies.setdefault((k, str(t.get("source", ""))), (len(policies), t))[0]
                links.append(f'<a href="#pol{n}">{esc(k)}</a>')
        if links:
            body.append(f'<p class="tol">policy: {", ".join(links)}</p>')
    if with_maps:
        figs = maps.figures(r)
        if figs:
            body.append(f'<div class="maps">{figs}</div>')
        elif st == "fail":
            body.append('<p class="muted">No error map: no failing output of this case is token-major.</p>')
    op = " open" if open_ else ""
    return (f'<details class="case {st}" id="f{i}"{op}><summary><span class="b {st}">{st}</span> '
            f'<code>{esc(r["id"])}</code></summary>{"".join(body)}</details>')


def _metric_row(m: dict) -> str:
    cls = "ok" if m.get("passed", True) else "bad"
    cells = [m.get("output"), "\u00d7".join(str(s) for s in m.get("shape") or []), _num(m.get("rel_rms")),
             _num(m.get("max_abs")), m.get("max_abs_index"), m.get("worst_token"), m.get("first_divergent_token"),
             m.get("tolerance"), _num(m.get("margin"), 2), _num(m.get("mismatch_frac")),
             f"{m.get('nan', 0)}/{m.get('inf', 0)}"]
    return f'<tr class="{cls}">' + "".join(f"<td>{esc(_cell(v))}</td>" for v in cells) + "</tr>"


class _Heatmaps:
    """PNG heatmaps of error maps: one reused matplotlib figure (Agg canvas), content-deduplicated."""

    def __init__(self):
        self.bytes = 0
        self.over_budget = 0
        self.capped_per_failure = 0
        self.unavailable: Optional[str] = None
        self._fig = None
        self._seen: Dict[str, str] = {}      # content hash -> img element id of the first copy

    def figures(self, r: dict) -> str:
        failing = [m for m in r.get("metrics") or [] if not m.get("passed", True) and m.get("error_map")]
        self.capped_per_failure += max(0, len(failing) - MAPS_PER_FAILURE)
        out = []
        for m in failing[:MAPS_PER_FAILURE]:
            em = m["error_map"]
            feature = len(m.get("shape") or []) < 3
            fdt = m.get("first_divergent_token")
            a = self._array(em)
            if a is None:
                continue
            key = hashlib.sha1(a.tobytes() + repr((a.shape, em.get("tokens_per_row"), em.get("heads_per_col"),
                                                   feature, fdt)).encode()).hexdigest()[:16]
            tpr, hpc = em.get("tokens_per_row") or 1, em.get("heads_per_col") or 1
            binning = (f" &middot; {tpr} tokens/row" if tpr > 1 else "") + \
                (f" &middot; {hpc} {'features' if feature else 'heads'}/col" if hpc > 1 else "")
            shape = esc(", ".join(map(str, m.get("shape") or [])))
            cap = f"<b>{esc(str(m.get('output')))}</b> <span class='muted'>[{shape}]{binning}</span>"
            if key in self._seen:
                out.append(f'<figure><img class="hm" data-same="{self._seen[key]}" alt="error map of '
                           f'{esc(str(m.get("output")))} (same as an earlier one)"><figcaption>{cap}'
                           '</figcaption></figure>')
                continue
            png = self._render(a, em, fdt, feature)
            if png is None:
                continue
            b64 = base64.b64encode(png).decode()
            if self.bytes + len(b64) > HEATMAP_BUDGET:
                self.over_budget += 1
                continue
            self.bytes += len(b64)
            hid = f"hm{len(self._seen)}"
            self._seen[key] = hid
            out.append(f'<figure><img class="hm" id="{hid}" alt="error map of {esc(str(m.get("output")))}" '
                       f'src="data:image/png;base64,{b64}"><figcaption>{cap}'
                       '</figcaption></figure>')
        return "".join(out)

    def _setup(self):
        try:
            import numpy as np
            from matplotlib import cm, colormaps, ticker
            from matplotlib.backends.backend_agg import FigureCanvasAgg
            from matplotlib.colors import LogNorm
            from matplotlib.figure import Figure
        except ImportError as e:             # the page still works, without images
            self.unavailable = f"matplotlib is not installed ({e})"
            return None
        fig = Figure(figsize=(4, 2.5), dpi=80)
        canvas = FigureCanvasAgg(fig)
        ax = fig.add_axes((0.15, 0.19, 0.6, 0.74))
        cax = fig.add_axes((0.78, 0.19, 0.035, 0.74))
        cmap = colormaps["magma"].with_extremes(bad="white", over=OVER_COLOUR)
        sm = cm.ScalarMappable(norm=LogNorm(0.1, 1), cmap=cmap)     # the colour bar's; the image is RGBA
        fig.colorbar(sm, cax=cax)
        im = ax.imshow(np.ones((2, 2, 4)), aspect="auto", interpolation="nearest", animated=True)
        marker, = ax.plot([0], [0], marker="<", ms=7, color=OVER_COLOUR, mec="black", mew=0.8, clip_on=False,
                          zorder=5, animated=True)
        for a in (ax, cax):
            a.tick_params(labelsize=8)
        self._fig = dict(np=np, ticker=ticker, LogNorm=LogNorm, fig=fig, canvas=canvas, ax=ax, cax=cax, cmap=cmap,
                         sm=sm, im=im, marker=marker, frames={})
        return self._fig

    def _frame(self, f, shape, tpr: int, hpc: int, feature: bool, lo: float, hi: float):
        """Set the axes for this layout; the drawn frame (axes, ticks, colour bar) is cached per layout,
        so a heatmap costs one image blit, not a full figure draw."""
        ticker, ax = f["ticker"], f["ax"]
        x1, y1 = shape[1] * hpc - 0.5, shape[0] * tpr - 0.5     # integer ticks land inside their bin
        f["im"].set_extent((-0.5, x1, y1, -0.5))
        ax.set_xlim(-0.5, x1)
        ax.set_ylim(y1, -0.5)
        key = (tuple(shape), tpr, hpc, feature, lo, hi)
        frames = f["frames"]
        if key in frames:
            return frames[key], x1
        f["sm"].set_norm(f["LogNorm"](lo, hi))
        cy = f["cax"].yaxis
        cy.set_major_locator(ticker.LogLocator(numticks=7))
        cy.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:.0e}"))
        cy.set_minor_locator(ticker.NullLocator())
        ax.xaxis.set_major_locator(ticker.MaxNLocator(6, integer=True))
        ax.yaxis.set_major_locator(ticker.MaxNLocator(5, integer=True))
        ax.set_xlabel(("feature" if feature else "head") + (f" ({hpc}/col)" if hpc > 1 else ""), fontsize=8)
        ax.set_ylabel("token" + (f" ({tpr}/row)" if tpr > 1 else ""), fontsize=8)
        f["canvas"].draw()                   # animated artists (image, marker) are left out
        if len(frames) >= 64:
            frames.pop(next(iter(frames)))
        frames[key] = f["canvas"].copy_from_bbox(f["fig"].bbox)
        return frames[key], x1

    def _array(self, em: dict):
        """The map's values as a 2-D float array, or None (malformed, or no matplotlib)."""
        f = self._fig or (None if self.unavailable else self._setup())
        if f is None:
            return None
        try:
            a = f["np"].asarray(em["values"], dtype=float)
        except (KeyError, TypeError, ValueError):
            return None
        return a if a.ndim == 2 and a.size else None

    def _render(self, a, em: dict, fdt, feature: bool) -> Optional[bytes]:
        f = self._fig
        np = f["np"]
        tpr, hpc = int(em.get("tokens_per_row") or 1), int(em.get("heads_per_col") or 1)
        nonfinite = ~np.isfinite(a) | (a >= NONFINITE)
        pos = a[(a > 0) & ~nonfinite]
        # whole decades, at most 12 of them: maps of a run share colour scales and compare at a glance
        hi = 10.0 ** math.ceil(math.log10(pos.max())) if pos.size else 1.0
        lo = 10.0 ** math.floor(math.log10(pos.min())) if pos.size else hi / 10
        lo = min(max(lo, hi * 1e-12), hi / 10)
        bg, x1 = self._frame(f, a.shape, tpr, hpc, feature, lo, hi)
        vals = np.where(nonfinite | ~(a > 0), np.nan, a)
        rgba = f["cmap"](f["LogNorm"](lo, hi)(np.ma.masked_invalid(vals)))
        rgba[nonfinite] = (0.0, 0.835, 1.0, 1.0)                      # OVER_COLOUR
        canvas, ax, im, marker = f["canvas"], f["ax"], f["im"], f["marker"]
        im.set_data(rgba)
        canvas.restore_region(bg)
        ax.draw_artist(im)
        for spine in ax.spines.values():
            ax.draw_artist(spine)
        if isinstance(fdt, int):
            marker.set_data([x1], [(fdt // tpr + 0.5) * tpr - 0.5])
            ax.draw_artist(marker)
        return _png(np.asarray(canvas.buffer_rgba()))


def _png(rgba) -> bytes:
    """PNG bytes of an RGBA array, quantised to a 128-colour palette (about 4x smaller for a heatmap)."""
    from PIL import Image               # a dependency of matplotlib
    out = io.BytesIO()
    Image.fromarray(rgba[..., :3]).quantize(128, method=Image.Quantize.FASTOCTREE).save(out, format="png")
    return out.getvalue()


# ----------------------------------------------------------------------------- all cases


def _all_cases(c) -> str:
    return ('<section id="all"><h2>All cases</h2><details id="alld"><summary>all '
            f'{c["total"]} cases, one per line: status, margin (log10(bound/error)), id</summary>'
            '<pre id="allpre" class="all"></pre></details></section>')


# ----------------------------------------------------------------------------- helpers


def _num(x, digits: int = 3) -> str:
    if x is None:
        return "-"
    if isinstance(x, bool):
        return str(x)
    if isinstance(x, (int, float)):
        if isinstance(x, float) and not math.isfinite(x):
            return str(x)
        return f"{x:.{digits}g}"
    return str(x)


def _short(x) -> str:
    return "" if x is None else _num(x, 2)


def _cell(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, list):
        return "[" + ", ".join(map(str, v)) + "]"
    return str(v)


_CONTROL = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|[\x00-\x08\x0b-\x1f\x7f]")   # ANSI colours, control bytes


def _clean(s: str) -> str:
    return _CONTROL.sub("", s)


def _clip(s: str, n: int) -> str:
    return s if len(s) <= n else s[:n - 3] + "..."


def _json_for_script(data) -> str:
    return json.dumps(data, separators=(",", ":")).replace("</", "<\\/")


_HEAD = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>%TITLE%</title>
<style>
:root{--pass:#c8e6c9;--passb:#2e7d32;--fail:#ffcdd2;--failb:#c62828;--error:#ffe0b2;--errorb:#e65100;
--skip:#eceff1;--skipb:#607d8b;--line:#d0d7de;--muted:#57606a}
*{box-sizing:border-box}
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0 auto;padding:0 20px 40px;
max-width:1500px;color:#1f2328;background:#fff}
code,pre,.cmd{font:12px/1.4 ui-monospace,SFMono-Regular,Menlo,Consolas,monospace}
h1{font-size:22px;margin:0 0 6px}h1 code{font-size:20px}h2{font-size:18px;margin:28px 0 8px;border-bottom:1px solid var(--line)}
h3{font-size:15px;margin:18px 0 6px}
header{padding:14px 18px;margin:0 -20px 10px;border-bottom:4px solid var(--passb);background:#f6f8fa}
header.fail{border-bottom-color:var(--failb)}header.skip{border-bottom-color:var(--skipb)}
.counts{margin:6px 0}.big{display:inline-block;padding:3px 10px;border-radius:12px;font-weight:600;margin-right:4px}
.big.pass,.b.pass{background:var(--pass);color:var(--passb)}.big.fail,.b.fail{background:var(--fail);color:var(--failb)}
.big.error,.b.error{background:var(--error);color:var(--errorb)}.big.skip,.b.skip{background:var(--skip);color:var(--skipb)}
.b{display:inline-block;padding:0 6px;border-radius:8px;font-size:12px;font-weight:600;white-space:nowrap}
.muted{color:var(--muted)}.banner{background:#ffebe9;border:2px solid var(--failb);color:#82071e;font-weight:600;
padding:8px 14px;margin:10px -20px 0;font-size:15px}.warn{background:#fff8c5;border:1px solid #d4a72c;padding:4px 8px;border-radius:4px}
.cols{display:flex;gap:24px;flex-wrap:wrap;align-items:flex-start}
table{border-collapse:collapse}
.kv th{text-align:left;padding:1px 10px 1px 0;color:var(--muted);font-weight:500;vertical-align:top}
.kv td{padding:1px 0;word-break:break-all}.kv caption{text-align:left;font-weight:600;color:var(--muted)}
nav{position:sticky;top:0;background:#fff;padding:6px 0;border-bottom:1px solid var(--line);z-index:5}
nav a{margin-right:16px;text-decoration:none;color:#0969da;font-weight:500}
.scroll{overflow-x:auto}.tall{max-height:70vh;overflow-y:auto;border:1px solid var(--line)}
.tall thead th{position:sticky;top:0;background:#f6f8fa;z-index:1}
.matrix th,.matrix td{border:1px solid var(--line);padding:3px 8px;text-align:center;white-space:nowrap}
.matrix thead th{background:#f6f8fa;font-weight:600}
.matrix tbody th{text-align:left;font-weight:500;background:#fafbfc}
.lvl{display:inline-block;min-width:38px;color:var(--muted);font-size:11px;text-transform:uppercase}
td.c{cursor:pointer;font-weight:600;min-width:64px}td.c:hover{outline:2px solid #0969da;outline-offset:-2px}
td.c.pass{background:var(--pass);color:var(--passb)}td.c.fail{background:var(--fail);color:var(--failb)}
td.c.error{background:var(--error);color:var(--errorb)}td.c.skip{background:var(--skip);color:var(--skipb)}
td.n{background:repeating-linear-gradient(45deg,#fff,#fff 4px,#f3f4f6 4px,#f3f4f6 8px)}
.filter{margin:6px 0 8px}.filter label{margin-right:8px}
.np{width:100%}.np th,.np td{border-bottom:1px solid var(--line);padding:3px 6px;text-align:left;vertical-align:top}
.wf{width:100%}.wf th,.wf td{border-bottom:1px solid var(--line);padding:3px 6px;text-align:left;vertical-align:top}
.wf td.cnt{text-align:right;font-weight:600}.okline{color:var(--passb);font-weight:600}
.np{table-layout:fixed}.np th:nth-child(1){width:64px}.np th:nth-child(2){width:34%}.np th:nth-child(4){width:30%}
.np td.id{font:12px ui-monospace,monospace;word-break:break-all}.np code.cmd{word-break:break-all;font-size:11px;color:#444}
details.case{border:1px solid var(--line);border-left:4px solid var(--failb);border-radius:4px;margin:8px 0;
padding:4px 10px}details.case.error{border-left-color:var(--errorb)}
details.case>summary{cursor:pointer;word-break:break-all}
.diag{margin:4px 0}pre.err,pre.tb{background:#fff5f5;padding:6px;overflow-x:auto;white-space:pre-wrap}
.metrics th,.metrics td{border:1px solid var(--line);padding:2px 6px;font-size:12px;white-space:nowrap}
.metrics th{background:#f6f8fa}.metrics tr.bad td{background:#fff0f0}.metrics tr.bad td:first-child{
font-weight:600;color:var(--failb)}.metrics tr.ok td{color:var(--muted)}
p.tol{font-size:12px;margin:4px 0}
.pol{table-layout:auto}.pol td{font-size:12px}
.maps{display:flex;flex-wrap:wrap;gap:10px;margin-top:6px}
figure{margin:0;border:1px solid var(--line);border-radius:4px;padding:4px;background:#fff}
figure img{display:block;width:320px;height:200px}figcaption{font-size:12px;max-width:320px}
pre.all{max-height:480px;overflow:auto;background:#f6f8fa;padding:6px;font-size:11px}
#panel{position:fixed;right:16px;top:48px;width:min(720px,60vw);max-height:75vh;overflow:auto;background:#fff;
border:1px solid #8c959f;border-radius:6px;box-shadow:0 8px 24px rgba(0,0,0,.2);z-index:10;padding:8px 12px}
#panel .ph{display:flex;justify-content:space-between;align-items:center;position:sticky;top:-8px;background:#fff}
#panel ol{font:12px ui-monospace,monospace;padding-left:28px;word-break:break-all}
#pclose{font-size:18px;border:0;background:none;cursor:pointer}
</style></head><body>"""

_JS = r"""
(function(){
var D=JSON.parse(document.getElementById('gdn-data').textContent);
var NAME={p:'pass',f:'fail',e:'error',s:'skip'};
function line(i){return NAME[D.st[i]]||D.st[i];}
document.addEventListener('mouseover',function(ev){
  var td=ev.target.closest&&ev.target.closest('td.c');if(!td||td.title)return;
  var ix=D.cells[+td.dataset.c],n=Math.min(ix.length,25),t=[];
  for(var k=0;k<n;k++)t.push(line(ix[k])+'  '+D.ids[ix[k]]);
  if(ix.length>n)t.push('... '+(ix.length-n)+' more: click the cell');
  td.title=t.join('\n');
});
var panel=document.getElementById('panel'),plist=document.getElementById('plist');
document.addEventListener('click',function(ev){
  var td=ev.target.closest&&ev.target.closest('td.c');if(!td)return;
  var ix=D.cells[+td.dataset.c].slice().sort(function(a,b){return 'efsp'.indexOf(D.st[a])-'efsp'.indexOf(D.st[b]);});
  var row=td.parentNode.querySelector('th').textContent,tbl=td.closest('table'),ci=td.cellIndex-1,col='';
  var h2=tbl.tHead.rows[1].cells[ci];if(h2){var acc=0,h1=tbl.tHead.rows[0].cells;
    for(var j=1;j<h1.length;j++){acc+=h1[j].colSpan;if(ci<acc){col=h1[j].textContent+' '+h2.textContent;break;}}}
  document.getElementById('ptitle').textContent=row+' / '+col+': '+ix.length+' case(s)';
  plist.innerHTML='';
  ix.forEach(function(i){var li=document.createElement('li'),s=line(i),b=document.createElement('span');
    b.className='b '+s;b.textContent=s;li.appendChild(b);li.appendChild(document.createTextNode(' '));
    if(D.a[i]){var a=document.createElement('a');a.href='#'+D.a[i];a.textContent=D.ids[i];li.appendChild(a);}
    else li.appendChild(document.createTextNode(D.ids[i]+(D.m[i]?'  (margin '+D.m[i]+')':'')));
    plist.appendChild(li);});
  panel.hidden=false;
});
document.getElementById('pclose').onclick=function(){panel.hidden=true;};
document.addEventListener('keydown',function(ev){if(ev.key==='Escape')panel.hidden=true;});
var q=document.getElementById('q');
if(q){var rows=document.getElementById('npbody').rows,boxes=document.querySelectorAll('input.fs'),shown=document.getElementById('shown');
  var filt=function(){var s=q.value.toLowerCase(),on={},n=0;boxes.forEach(function(b){on[b.value]=b.checked;});
    for(var k=0;k<rows.length;k++){var r=rows[k];if(r._t===undefined)r._t=r.textContent.toLowerCase();
      var v=on[r.dataset.s]&&(!s||r._t.indexOf(s)>=0);r.style.display=v?'':'none';if(v)n++;}
    shown.textContent=n+' of '+rows.length+' shown';};
  q.addEventListener('input',filt);boxes.forEach(function(b){b.addEventListener('change',filt);});filt();}
document.querySelectorAll('img[data-same]').forEach(function(img){var o=document.getElementById(img.dataset.same);
  if(o)img.src=o.src;});
var alld=document.getElementById('alld');
alld.addEventListener('toggle',function(){var pre=document.getElementById('allpre');if(!alld.open||pre.textContent)return;
  var out=[];for(var i=0;i<D.ids.length;i++){var s=line(i);out.push((s+'     ').slice(0,6)+(D.m[i]+'        ').slice(0,8)+D.ids[i]);}
  pre.textContent=out.join('\n');});
})();
"""
