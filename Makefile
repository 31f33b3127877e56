# Shortcuts for the README commands (scripts/smoke.sh, scripts/test.sh). GNU make reports any
# failing recipe as exit 2: CI and scripts that need the harness's own exit code (1 = a
# correctness failure, 2 = a usage error) call the scripts directly.
.PHONY: smoke test test-latest lock

smoke:        ## set up, then the main job: the smoke suite on reference and triton; report in reports/latest/
	scripts/smoke.sh

test:         ## set up with the test extras (pinned versions), then run the harness's own tests
	scripts/test.sh

test-latest:  ## the drift lane: the tests on the newest versions pyproject.toml allows, naming what broke
	python3 scripts/drift.py

lock:         ## the drift lane, then rewrite constraints.txt from it when it is green
	python3 scripts/drift.py --write-lock
