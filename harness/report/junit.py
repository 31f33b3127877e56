"""CI report files: junit.xml (any JUnit-reading CI) and a Buildkite annotation (markdown).

junit.xml has one ``<testsuite>`` per backend x level and one ``<testcase>`` per case
(classname ``<suite>.<backend>.<level>``, name = case id, time = duration_s). A failing
case carries ``<failure>`` whose message holds the key metrics of the worst output and
whose body holds every failing output and the repro command; an error carries
``<error>`` with the error text and the traceback tail; a skip carries ``<skipped>``.
"""
from __future__ import annotations

import math
import re
import socket
import xml.etree.ElementTree as ET
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path
from typing import List, Optional

from harness.diagnosis.core import hypothesis_lines, signature_lines
from harness.report.results import atomic_write, backend_level_table, counts

BUILDKITE_LIMIT = 1 << 20        # buildkite-agent annotate refuses bodies over 1 MiB
BUILDKITE_FAILURES = 20
MESSAGE_CHARS = 1000             # failure / error message attribute
TRACEBACK_CHARS = 3000           # traceback tail in an <error> body
# ANSI colour sequences, and characters XML 1.0 does not allow: dropped from any text
_XML_BAD = re.compile("\x1b\\[[0-9;?]*[A-Za-z]|[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")


def write_junit(report_dir: Path, records: List[dict], meta: dict) -> Path:
    """Write ``junit.xml`` into report_dir (atomically) and return its path."""
    path = Path(report_dir) / "junit.xml"
    atomic_write(path, junit_xml(records, meta))
    return path


def junit_xml(records: List[dict], meta: dict) -> str:
    suite = str(meta.get("suite") or (records[0].get("suite") if records else "") or "gdn-harness")
    stamp = str(meta.get("created") or datetime.now(timezone.utc).isoformat(timespec="seconds"))
    groups: dict = {}
    # an interrupted (or still running) run: the case that was running is an error, the
    # cases never started are skipped, both saying why
    unfinished = meta.get("unfinished_cases") or []
    stop = ("interrupted by " + meta["interrupt_signal"] if meta.get("interrupt_signal") else
            "the run was interrupted" if meta.get("interrupted") else "the run did not finish (in progress, or killed)")
    for u in unfinished:
        running = u.get("state") == "running"
        records = records + [dict(id=u["id"], backend=u.get("backend"), level=u.get("level"), suite=suite,
                                  status="error" if running else "skip", unfinished=True,
                                  error=(f"{stop} while this case was running ({u.get('seconds', 0):g} s in)"
                                         if running else f"not run: {stop}"))]
    for r in records:                     # first-seen order: the order the cases ran
        groups.setdefault((str(r.get("backend")), str(r.get("level"))), []).append(r)
    c = counts(records)
    root = ET.Element("testsuites", name=_x(f"gdn-harness {suite}"), tests=str(c["total"]), failures=str(c["fail"]),
                      errors=str(c["error"]), skipped=str(c["skip"]),
                      time=_t(sum(_dur(r) for r in records)), timestamp=stamp)
    env = meta.get("environment") or {}
    props = {"suite": suite, "suite_file": meta.get("suite_file"), "policy_version": meta.get("policy_version"),
             "policy_file": meta.get("policy_file"), "command": meta.get("command"), "device": meta.get("device"),
             "run_state": meta.get("run_state"),
             **{f"env.{k}": v for k, v in env.items()}}
    for (backend, level), recs in groups.items():
        classname = f"{suite}.{backend}.{level}"
        gc = Counter(r["status"] for r in recs)
        ts = ET.SubElement(root, "testsuite", name=_x(classname), tests=str(len(recs)),
                           failures=str(gc.get("fail", 0)), errors=str(gc.get("error", 0)),
                           skipped=str(gc.get("skip", 0)), time=_t(sum(_dur(r) for r in recs)),
                           timestamp=stamp, hostname=_x(socket.gethostname()))
        pe = ET.SubElement(ts, "properties")
        for k, v in {**props, "backend": backend, "level": level}.items():
            if v is not None:
                ET.SubElement(pe, "property", name=k, value=_x(str(v)))
        for r in recs:
            tc = ET.SubElement(ts, "testcase", classname=_x(classname), name=_x(str(r["id"])), time=_t(_dur(r)))
            st = r["status"]
            if st == "fail":
                el = ET.SubElement(tc, "failure", message=_x(_clip(failure_message(r), MESSAGE_CHARS)),
                                   type="ToleranceExceeded")
                el.text = _x(failure_body(r))
            elif st == "error":
                err = str(r.get("error") or "error")
                kind = err.split(":", 1)[0] if re.match(r"^[A-Za-z_][\w.]*:", err) else "Error"
                kind = "Interrupted" if r.get("unfinished") else kind
                el = ET.SubElement(tc, "error", message=_x(_clip(err.splitlines()[0] if err else err, MESSAGE_CHARS)),
                                   type=_x(kind))
                body = [err]
                for key, label in (("traceback", "traceback (tail)"), ("stderr_tail", "stderr of the worker (tail)")):
                    if r.get(key):
                        body += ["", f"{label}:", str(r[key])[-TRACEBACK_CHARS:].rstrip("\n")]
                body += ["", f"repro: {r.get('repro', '')}", ""]
                el.text = _x("\n".join(body))
            elif st == "skip":
                ET.SubElement(tc, "skipped", message=_x(_clip(str(r.get("error") or "skipped"), MESSAGE_CHARS)))
            if st in ("pass", "skip") and (st == "skip" or r.get("filled_ops")):   # fail / error bodies have both
                out = ET.SubElement(tc, "system-out")
                out.text = _x(f"repro: {r.get('repro', '')}\n" + (
                    f"filled from the reference: {', '.join(r['filled_ops'])}\n" if r.get("filled_ops") else ""))
    ET.indent(root, space=" ")
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"


def worst_failing(r: dict) -> Optional[dict]:
    """The failing output with the smallest margin (the one the diagnosis names)."""
    failed = [m for m in r.get("metrics") or [] if not m.get("passed", True)]
    return min(failed, key=lambda m: _f(m.get("margin"))) if failed else None


def failure_message(r: dict) -> str:
    """One line: n failing outputs; worst output's rel_rms vs tolerance, max |diff| and index, first divergent token."""
    metrics = r.get("metrics") or []
    w = worst_failing(r)
    if w is None:
        return r.get("diagnosis") or "out of tolerance"
    n_bad = sum(1 for m in metrics if not m.get("passed", True))
    msg = (f"{n_bad}/{len(metrics)} outputs out of tolerance; worst {w.get('output')}: "
           f"rel_rms {_g(w.get('rel_rms'))} vs {w.get('tolerance')} (margin {_g(w.get('margin'), 2)}), "
           f"max |diff| {_g(w.get('max_abs'))} at {w.get('max_abs_index')}")
    if w.get("first_divergent_token") is not None or w.get("worst_token") is not None:
        msg += f", first divergent token {w.get('first_divergent_token')}, worst token {w.get('worst_token')}"
    if w.get("nan") or w.get("inf"):
        msg += f", {w.get('nan')} NaN / {w.get('inf')} Inf"
    top = (r.get("hypotheses") or [None])[0]
    if top and top.get("matched"):
        msg += f"; likely cause: {top.get('label')} ({top.get('hypothesis')})"
    return msg


def failure_body(r: dict) -> str:
    lines = [r.get("diagnosis") or "", "", "failing outputs:"]
    for m in r.get("metrics") or []:
        if m.get("passed", True):
            continue
        lines.append(f"  {m.get('output')} {m.get('shape')}: rel_rms {_g(m.get('rel_rms'))} vs {m.get('tolerance')}"
                     f" (margin {_g(m.get('margin'), 2)}), max |diff| {_g(m.get('max_abs'))} at "
                     f"{m.get('max_abs_index')}, mismatch {_g(m.get('mismatch_frac'))}, worst token "
                     f"{m.get('worst_token')}, first divergent token {m.get('first_divergent_token')}, "
                     f"nan {m.get('nan')}, inf {m.get('inf')}")
    hyps = hypothesis_lines(r, 3)
    if hyps:
        lines += ["", "fault hypotheses (re-run through the reference, best first):"] + [f"  {h}" for h in hyps]
    sigs = signature_lines(r)
    if sigs:
        lines += ["", "localised / structure of the difference:"] + [f"  {h}" for h in sigs]
    if r.get("filled_ops"):
        lines += ["", f"filled from the reference: {', '.join(r['filled_ops'])}"]
    lines += ["", f"repro: {r.get('repro', '')}", ""]
    return "\n".join(lines)


# ----------------------------------------------------------------------------- Buildkite


def buildkite_markdown(records: List[dict], meta: dict) -> str:
    c = counts(records)
    ok = not (c["fail"] or c["error"])
    head = "passed" if ok else "failed"
    lines = [f"### gdn-harness: suite `{meta.get('suite', '')}` {head}", "",
             f"**{c['pass']} passed, {c['fail']} failed, {c['error']} errors, {c['skip']} skipped** of {c['total']} "
             f"cases &middot; wall {_g(meta.get('wall_s', 0))} s &middot; policy v{meta.get('policy_version')} "
             f"&middot; device `{meta.get('device', '')}`", ""]
    lines += backend_level_table(records, code=True)
    bad = [r for r in records if r["status"] in ("fail", "error")]
    if bad:
        shown = bad[:BUILDKITE_FAILURES]
        lines += [f"#### Failures and errors ({len(shown)} of {len(bad)} shown)" if len(bad) > len(shown) else
                  f"#### Failures and errors ({len(bad)})", ""]
        for r in shown:
            what = failure_message(r) if r["status"] == "fail" else _error_line(r)
            lines += [f"- **{r['status']}** `{r['id']}`", f"  {_md(_clip(what, 800))}", "",
                      "  ```", f"  {r.get('repro', '')}", "  ```", ""]
    lines.append(f"Full report: `report.html`, `results.json`, `junit.xml` in the run's report folder. "
                 f"Command: `{meta.get('command', '')}`")
    text = "\n".join(lines) + "\n"
    if len(text.encode()) > BUILDKITE_LIMIT:
        cut = text.encode()[:BUILDKITE_LIMIT - 200].decode(errors="ignore")
        text = cut.rsplit("\n", 1)[0] + "\n\n... truncated to stay under 1 MiB; see results.json.\n"
    return text


def _error_line(r: dict) -> str:
    """The error text, plus the last line of the traceback / worker stderr when that says more."""
    err = str(r.get("error") or "error")
    for key in ("stderr_tail", "traceback"):
        tail = [ln.strip() for ln in str(r.get(key) or "").splitlines() if ln.strip()]
        if tail and tail[-1] not in err:
            return f"{err} — {tail[-1]}"
    return err


def write_buildkite(path: Path, records: List[dict], meta: dict) -> Path:
    """Write the annotation (markdown, < 1 MiB) to ``path`` (a folder gets ``buildkite.md``); return the file."""
    path = Path(path)
    if path.is_dir():
        path = path / "buildkite.md"
    atomic_write(path, buildkite_markdown(records, meta))
    return path


# ----------------------------------------------------------------------------- helpers


def _f(x) -> float:
    try:
        return float(x)
    except (TypeError, ValueError):
        return math.inf


def _g(x, digits: int = 3) -> str:
    if isinstance(x, (int, float)) and not isinstance(x, bool):
        return f"{x:.{digits}g}" if math.isfinite(x) else str(x)
    return "-" if x is None else str(x)


def _dur(r: dict) -> float:
    d = r.get("duration_s")
    return float(d) if isinstance(d, (int, float)) and math.isfinite(d) else 0.0


def _t(x: float) -> str:
    return f"{x:.4f}"


def _x(s: str) -> str:
    return _XML_BAD.sub("", s)


def _clip(s: str, n: int) -> str:
    return s if len(s) <= n else s[:n - 3] + "..."


def _md(s: str) -> str:
    return _x(s).replace("\n", " ").replace("|", "\\|").replace("<", "&lt;")
