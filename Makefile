# The two commands of the README. Both set everything up first (scripts/setup.sh).
PY := $(if $(VIRTUAL_ENV),$(VIRTUAL_ENV)/bin,.venv/bin)

.PHONY: smoke test
smoke:  ## set up, then the main job: the smoke suite on reference and triton (interpreter), report in reports/latest/
	scripts/setup.sh triton
	$(PY)/gdn-harness run --suite smoke --backend reference --backend triton

test:   ## set up with the test extras, then run the harness's own tests
	scripts/setup.sh dev,fla,triton,eval
	$(PY)/python -m pytest -n auto
