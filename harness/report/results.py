"""Report files of a run: results.json (versioned schema) and summary.md (< 1 MiB)."""
from __future__ import annotations

import json
import os
import platform
import tempfile
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path
from typing import Dict, List, Optional

import torch

from harness import __version__
from harness.diagnosis.core import signature_lines

SCHEMA_VERSION = 1
SUMMARY_LIMIT = 1 << 20          # summary.md stays under 1 MiB whatever the run size
STATUSES = ("pass", "fail", "error", "skip")


def atomic_write(path: Path, text: str) -> None:
    """Write via a temp file and rename, so a reader never sees half a report."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.chmod(tmp, 0o644)             # mkstemp creates 0600; reports are for everyone
    os.replace(tmp, path)


def environment() -> dict:
    env = dict(python=platform.python_version(), torch=torch.__version__, harness=__version__,
               platform=platform.platform(), cuda=torch.version.cuda,
               device_name=torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu")
    return env


def counts(records: List[dict]) -> dict:
    c = Counter(r["status"] for r in records)
    return {s: c.get(s, 0) for s in STATUSES} | {"total": len(records)}


def encode_record(rec: dict) -> str:
    """One case as one line of results.json (json's C encoder; an indented dump runs in pure
    Python, ~3x slower: 0.43 s for a 392-case ci run, written several times while it runs)."""
    return json.dumps(rec, default=str)


def write_results(report_dir: Path, records: List[dict], meta: dict,
                  encoded: Optional[List[str]] = None) -> Path:
    """results.json: the run's fields indented, then one line per case. `encoded`: the
    records already passed through `encode_record` (a live run's earlier writes)."""
    doc = dict(schema_version=SCHEMA_VERSION, created=datetime.now(timezone.utc).isoformat(),
               environment=environment(), counts=counts(records), **meta)
    lines = encoded if encoded is not None else [encode_record(r) for r in records]
    head = json.dumps(doc, indent=1, default=str)[:-2]        # without its closing "\n}"
    cases = '[\n' + ",\n".join(lines) + '\n ]' if lines else "[]"
    path = Path(report_dir) / "results.json"
    atomic_write(path, f'{head},\n "cases": {cases}\n}}\n')
    return path


def backend_level_table(records: List[dict], code: bool = False) -> List[str]:
    """Markdown rows: pass / fail / error / skip counts per backend x level (+ a blank line)."""
    table = Counter((r["backend"], r["level"], r["status"]) for r in records)
    groups = sorted({(b, lv) for b, lv, _ in table})
    if not groups:
        return []
    name = (lambda b: f"`{b}`") if code else (lambda b: b)
    return (["| backend | level | pass | fail | error | skip |", "|---|---|---|---|---|---|"]
            + [f"| {name(b)} | {lv} | " + " | ".join(str(table.get((b, lv, st), 0)) for st in STATUSES) + " |"
               for b, lv in groups] + [""])


def filled_ops_by_backend(records: List[dict]) -> Dict[str, List[str]]:
    """Backend -> the ops filled from the reference at layer level in any of its cases (both sorted)."""
    filled: Dict[str, set] = {}
    for r in records:
        for op in r.get("filled_ops") or []:
            filled.setdefault(r["backend"], set()).add(op)
    return {b: sorted(ops) for b, ops in sorted(filled.items())}


def pad_rows_not_compared(records: List[dict]) -> Dict[str, dict]:
    """Backend -> {reason, cases, outputs}: where its declared-unspecified PAD-row outputs were left out."""
    found: Dict[str, dict] = {}
    for r in records:
        d = r.get("pad_rows_not_compared")
        if d:
            e = found.setdefault(r["backend"], dict(reason=d.get("reason", ""), cases=0, outputs=set()))
            e["cases"] += 1
            e["outputs"].update(d.get("outputs", []))
    return {b: dict(e, outputs=sorted(e["outputs"])) for b, e in sorted(found.items())}


def pad_rows_sentence(backend: str, e: dict) -> str:
    return (f"`{backend}` declares PAD-row outputs unspecified: PAD rows were not compared in {e['cases']} "
            f"cases (outputs {', '.join(e['outputs'])}); states and real rows were. Reason: {e['reason']}")


def incomplete_headline(records: List[dict], meta: dict) -> str:
    """'' for a complete run; else what cut it short, in words (the first line of every report)."""
    planned = meta.get("planned_cases")
    state = meta.get("run_state") or ("interrupted" if meta.get("interrupted") else "complete")
    if state == "complete" and not (isinstance(planned, int) and planned > len(records)):
        return ""
    of = f"{len(records)} of {planned if isinstance(planned, int) else '?'} planned cases finished"
    if state == "interrupted":
        head = f"INTERRUPTED ({meta.get('interrupt_signal') or 'signal'}): {of}"
    elif state == "running":
        head = f"INCOMPLETE (the run is in progress, or its process was killed): {of}"
    else:
        head = f"INCOMPLETE: {of}"
    running = [u for u in meta.get("unfinished_cases") or [] if u.get("state") == "running"]
    if running:
        head += "; running: " + ", ".join(f"{u['id']} ({u.get('seconds', 0):g} s in)" for u in running[:4])
    return head


def unfinished_lines(meta: dict) -> List[str]:
    """Markdown: the case(s) running when the run stopped and how many never started."""
    un = meta.get("unfinished_cases") or []
    if not un:
        return []
    running = [u for u in un if u.get("state") == "running"]
    lines = ["## Unfinished cases", ""]
    lines += [f"- running when the run stopped ({u.get('seconds', 0):g} s in): `{u['id']}`" for u in running]
    if len(un) > len(running):
        lines.append(f"- {len(un) - len(running)} case(s) not started (listed in results.json `unfinished_cases`)")
    return lines + [""]


def problem_text(r: dict) -> str:
    """What went wrong with a case, in words: the error of an error, the diagnosis of a failure."""
    if r.get("status") in ("error", "skip"):
        return "; ".join(str(r[k]) for k in ("error", "diagnosis") if r.get(k))
    return r.get("diagnosis") or r.get("error") or ""


def summary_markdown(records: List[dict], meta: dict) -> str:
    c = counts(records)
    cut = incomplete_headline(records, meta)
    planned = meta.get("planned_cases")
    lines = [f"# {cut} - gdn-harness suite `{meta.get('suite')}`" if cut else f"# gdn-harness: suite `{meta.get('suite')}`",
             "", f"**{c['pass']} passed, {c['fail']} failed, {c['error']} errors, {c['skip']} skipped** "
             f"of {c['total']} cases" + (f" ({planned} planned)" if isinstance(planned, int) and planned != c["total"]
                                         else "")
             + f" · wall {meta.get('wall_s', 0):.1f} s · policy v{meta.get('policy_version')}",
             "", f"Command: `{meta.get('command', '')}`", ""]
    lines += unfinished_lines(meta)
    lines += backend_level_table(records)
    filled = filled_ops_by_backend(records)
    for backend, ops in filled.items():
        lines.append(f"Filled from the reference at layer level for `{backend}`: {', '.join(ops)}.")
    if filled:
        lines.append("")
    for backend, e in pad_rows_not_compared(records).items():
        lines += [pad_rows_sentence(backend, e) + ".", ""]
    bad = [r for r in records if r["status"] in ("fail", "error")]
    if bad:
        lines += ["## Failures", "", "| case | status | diagnosis / error | repro |", "|---|---|---|---|"]
        for r in bad:
            what = (problem_text(r) or "").replace("|", "\\|").replace("\n", " ")
            lines.append(f"| `{r['id']}` | {r['status']} | {what[:300]} | `{r['repro']}` |")
        lines.append("")
    lines += diagnosis_section(bad)
    margins = [r for r in records if r["status"] == "pass" and isinstance(r.get("margin"), (int, float))]
    if margins:
        tight = sorted(margins, key=lambda r: r["margin"])[:5]
        lines += ["## Tightest passes (margin = log10(bound / error))", ""]
        for r in tight:
            m = min((m for m in r["metrics"] if isinstance(m["margin"], (int, float))), key=lambda m: m["margin"])
            lines.append(f"- `{r['id']}`: margin {r['margin']:.2f} on {m['output']} "
                         f"(rel_rms {m['rel_rms']:.2g}, {m['tolerance']})")
        lines.append("")
    lines += ["Full report: `report.html` (matrix, heatmaps); records: `results.json`; CI: `junit.xml` - in this folder."]
    text = "\n".join(lines) + "\n"
    if len(text.encode()) > SUMMARY_LIMIT:
        cut = text.encode()[:SUMMARY_LIMIT - 200].decode(errors="ignore")
        text = cut.rsplit("\n", 1)[0] + "\n\n... truncated to stay under 1 MiB; see results.json.\n"
    return text


def diagnosis_section(bad: List[dict]) -> List[str]:
    """Failing cases grouped by the fault class their top hypothesis names (harness.diagnosis)."""
    groups: dict = {}
    for r in bad:
        top = (r.get("hypotheses") or [None])[0]
        if top:
            groups.setdefault((top.get("label") or top.get("class"), top.get("hypothesis")), []).append((r, top))
    structural = [(r, signature_lines(r, 1)) for r in bad if signature_lines(r, 1)]
    if not groups and not structural:
        return []
    lines = ["## Diagnosis (fault hypotheses re-run through the reference)", "",
             "| fault class | hypothesis | reproduces | cases | what it means | example |", "|---|---|---|---|---|---|"]
    for (label, name), rs in sorted(groups.items(), key=lambda kv: -len(kv[1])):
        r, top = rs[0]
        how = "all outputs" if top.get("matched") else f"{top.get('fixed')}/{top.get('failing')} failing outputs"
        words = str(top.get("words", "")).replace("|", "\\|")
        lines.append(f"| {label} | `{name}` | {how} | {len(rs)} | {words[:300]} | `{r['id']}` |")
    undiagnosed = sum(1 for r in bad if not r.get("hypotheses"))
    if undiagnosed:
        lines.append(f"\n{undiagnosed} failing case(s) matched no known hypothesis.")
    if structural:      # op attribution and structural signatures (harness.diagnosis.signatures)
        lines += ["", "| case | localised / structure |", "|---|---|"]
        lines += [f"| `{r['id']}` | {'; '.join(ls).replace('|', chr(92) + '|')[:400]} |" for r, ls in structural[:40]]
    return lines + [""]


def write_summary(report_dir: Path, records: List[dict], meta: dict, step_summary: bool = True) -> Path:
    """summary.md; also appended to $GITHUB_STEP_SUMMARY with `step_summary` (the final write only)."""
    path = Path(report_dir) / "summary.md"
    text = summary_markdown(records, meta)
    atomic_write(path, text)
    step = os.environ.get("GITHUB_STEP_SUMMARY")
    if step and step_summary:
        with open(step, "a") as f:
            f.write(text)
    return path
