"""A run in progress: its report files kept current as cases finish, and the console line.

`LiveReport` writes results.json, summary.md, junit.xml and report.html at the start of a
run (``run_state: running``, no case yet), again as cases finish (throttled so the writes
cost at most about a tenth of the run), and once at the end (``complete``, or
``interrupted`` with the case(s) that were running and those never started). A parent
killed hard (SIGKILL, the OOM killer) so leaves the report of every case finished up to
a few seconds before; it reads ``run_state: running``, never looks complete.
"""
from __future__ import annotations

import signal
import sys
import threading
import time
from pathlib import Path
from typing import Dict, List, Optional

from harness.report.results import encode_record, write_results, write_summary

PARTIAL_EVERY_S = 2.0            # at least this long between two partial writes
PARTIAL_COST = 10                # ... and at least this many times what the last one took


class LiveReport:
    def __init__(self, report_dir: Path, meta: dict, planned: List[dict], buildkite: Optional[Path] = None):
        """`planned`: one dict (id, backend, level) per case the run will try, in order."""
        self.dir, self.meta, self.planned, self.buildkite = Path(report_dir), meta, planned, buildkite
        self.records: List[dict] = []
        self._encoded: List[str] = []                # records[:n] as results.json lines, for partial writes
        self.running: Dict[str, float] = {}          # case id -> time.monotonic() at its start
        self.t0 = time.perf_counter()
        self.finished = False
        self._lock = threading.RLock()
        self._due = 0.0

    def start(self, case_id: str) -> None:
        with self._lock:
            self.running[case_id] = time.monotonic()

    def done(self, rec: dict) -> None:
        with self._lock:
            if self.finished:
                return
            self.running.pop(rec["id"], None)
            self.records.append(rec)
            if time.monotonic() >= self._due:
                t = time.monotonic()
                self.write("running")
                self._due = time.monotonic() + max(PARTIAL_EVERY_S, PARTIAL_COST * (time.monotonic() - t))

    def running_now(self) -> List[dict]:
        now = time.monotonic()
        with self._lock:
            return [dict(id=i, seconds=round(now - t, 1)) for i, t in self.running.items()]

    def finish(self, signum: Optional[int] = None) -> Optional[Path]:
        """The final write (once; None if it was done already): ``complete``, or ``interrupted`` by `signum`."""
        with self._lock:
            if self.finished:
                return None
            path = self.write("interrupted" if signum else "complete", signum)
            self.finished = True
            return path

    def run_meta(self, state: str, signum: Optional[int] = None) -> dict:
        done = {r["id"] for r in self.records}
        running = {d["id"]: d["seconds"] for d in self.running_now()}
        unfinished = [dict(p, state="running", seconds=running[p["id"]]) if p["id"] in running
                      else dict(p, state="not started") for p in self.planned if p["id"] not in done]
        meta = dict(self.meta, wall_s=round(time.perf_counter() - self.t0, 3), run_state=state,
                    interrupted=state == "interrupted", planned_cases=len(self.planned))
        if unfinished:
            meta["unfinished_cases"] = unfinished
        if signum:
            meta["interrupt_signal"] = signal.Signals(signum).name
        return meta

    def write(self, state: str, signum: Optional[int] = None) -> Path:
        from harness.report.html import write_html
        from harness.report.junit import write_buildkite, write_junit
        with self._lock:
            records, meta = list(self.records), self.run_meta(state, signum)
        encoded = None
        if state == "running":   # a partial write encodes only the records new since the last one
            self._encoded.extend(encode_record(r) for r in records[len(self._encoded):])
            encoded = self._encoded[:len(records)]
        write_results(self.dir, records, meta, encoded)
        summary = write_summary(self.dir, records, meta, step_summary=state != "running")
        write_junit(self.dir, records, meta)
        write_html(self.dir, records, meta)
        if self.buildkite and state != "running":
            write_buildkite(self.buildkite, records, meta)
        return summary


class Progress:
    """The console while cases run. On a terminal a live tqdm line: the case in progress,
    done / total, failures, elapsed and ETA. Otherwise (CI logs) one line per finished case
    with an ETA. Nothing with `quiet`."""

    def __init__(self, total: int, quiet: bool):
        self.total, self.quiet, self.n, self.fails = total, quiet, 0, 0
        self.t0 = time.monotonic()
        self.bar = None
        if not quiet and sys.stderr.isatty():
            from tqdm import tqdm
            self.bar = tqdm(total=total, unit="case", dynamic_ncols=True)

    def start(self, case_id: str) -> None:
        if self.bar is not None:
            self.bar.set_description_str(case_id[:60], refresh=True)

    def done(self, rec: dict) -> None:
        self.n += 1
        self.fails += rec["status"] in ("fail", "error")
        if self.quiet:
            return
        if self.bar is not None:
            self.bar.set_postfix_str(f"{self.fails} failing", refresh=False)
            self.bar.update(1)
            return
        left = (time.monotonic() - self.t0) / self.n * (self.total - self.n)
        print(f"[{self.n:>4}/{self.total}] {rec['status'].upper():5} {rec['id']}  {rec.get('duration_s') or 0:.2f}s"
              f"  eta {_hms(left)}", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _hms(s: float) -> str:
    s = int(round(s))
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"

