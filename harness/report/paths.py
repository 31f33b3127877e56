"""Where runs go: the report folder of a run, `reports/latest`, and a case found again by
id in a run's results.json (repro, shrink) - shared by the CLI, the tools and the evals."""
from __future__ import annotations

import json
import os
from datetime import datetime
from pathlib import Path
from typing import Optional

from harness.cases.case import Case
from harness.errors import HarnessError

DEFAULT_REPORTS = Path("reports")


def report_dir(arg: Optional[str]) -> Path:
    """The folder a run writes: `arg`, else a new timestamped one under reports/."""
    if arg:
        return Path(arg)
    return DEFAULT_REPORTS / datetime.now().strftime("%Y%m%d-%H%M%S")


def point_latest(report_dir: Path) -> None:
    """reports/latest -> the newest run (only for runs under the default reports folder)."""
    if report_dir.parent.resolve() != DEFAULT_REPORTS.resolve():
        return
    latest = DEFAULT_REPORTS / "latest"
    tmp = DEFAULT_REPORTS / ".latest.tmp"
    if tmp.is_symlink() or tmp.exists():
        tmp.unlink()
    tmp.symlink_to(report_dir.name)
    os.replace(tmp, latest)


def find_case(arg: str, results: Optional[str]):
    """A case from a case JSON file, or by id from a results.json (default reports/latest);
    returns (case, suite name)."""
    path = Path(arg)
    if path.suffix == ".json" and path.exists():
        data = json.loads(path.read_text())
        return Case.from_dict(data.get("case", data)), data.get("suite", "repro")
    from harness.report.diffing import load_results
    recs = load_results(results or str(DEFAULT_REPORTS / "latest"))
    matches = [r for cid, r in recs.items() if cid == arg] or [r for cid, r in recs.items() if arg in cid]
    if len(matches) != 1:
        raise HarnessError(f"repro {arg!r}: {len(matches)} cases match in {results or 'reports/latest'}"
                           + (f": {[m['id'] for m in matches[:5]]}" if matches else ""))
    return Case.from_dict(matches[0]["case"]), matches[0]["suite"]
