"""Case worker for isolated runs: ``python -m harness.worker``.

Reads a JSON object {"cases": [...], "suite", "policy", "oracle_device"} on stdin and
prints one JSON record per finished case, one per line, so the parent keeps every
record a crash or hang did not reach.
"""
from __future__ import annotations

import json
import sys

from .cases import Case
from .policy import Policy
from .runner import BackendCache, run_case


def main() -> int:
    job = json.loads(sys.stdin.read())
    policy = Policy(job["policy"]) if job.get("policy") else Policy()
    backends = BackendCache()
    for d in job["cases"]:
        rec = run_case(Case.from_dict(d), policy, job["suite"], backends, job.get("oracle_device"))
        sys.stdout.write(json.dumps(rec, default=str) + "\n")
        sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
