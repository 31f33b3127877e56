"""The pinned environment (constraints.txt) and the drift lane (scripts/drift.py)."""
import importlib.util
import os
import re
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
spec = importlib.util.spec_from_file_location("drift", ROOT / "scripts" / "drift.py")
drift = importlib.util.module_from_spec(spec)
spec.loader.exec_module(drift)


def _requirements():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = list(project["dependencies"])
    for extra in project["optional-dependencies"].values():
        reqs += extra
    return {drift.canon(re.split(r"[<>=!~\[; ]", r, maxsplit=1)[0]) for r in reqs}


def test_every_requirement_is_pinned():
    pins = drift.read_pins((ROOT / "constraints.txt").read_text().splitlines())
    missing = sorted(_requirements() - set(pins))
    assert not missing, f"constraints.txt pins none of {missing}: `make lock` after adding a dependency"


def test_torch_build_lines_are_marked():
    marked = {drift.canon(line.split("==")[0]) for line in (ROOT / "constraints.txt").read_text().splitlines()
              if "# torch build" in line}
    assert {"torch", "triton"} <= marked


def test_moving_apis_have_upper_bounds():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = [r for extra in project["optional-dependencies"].values() for r in extra]
    for name in ("transformers", "lm-eval", "fla-core", "triton"):
        specs = [r for r in reqs if drift.canon(re.split(r"[<>=!~\[; ]", r, maxsplit=1)[0]) == name]
        assert specs and all("<" in r for r in specs), (name, specs)


def test_read_pins_drops_comments_and_local_versions():
    pins = drift.read_pins(["# header", "torch==2.13.0+cpu  # torch build", "Foo_Bar==1.2", "-e git+x", ""])
    assert pins == {"torch": ("torch", "2.13.0"), "foo-bar": ("Foo_Bar", "1.2")}


def test_node_id_from_junit(tmp_path):
    assert drift.node_id("tests.test_lock", "test_x[a-1]") == "tests/test_lock.py::test_x[a-1]"
    assert drift.node_id("tests.test_lock.TestK", "test_y") == "tests/test_lock.py::TestK::test_y"


def test_report_names_the_breaking_upgrade_and_the_new_package():
    upgrades = [dict(name="transformers", pinned="5.24.0", newest="5.25.0"),
                dict(name="kernels", pinned=None, newest="0.19.1", required_by="transformers")]
    blame = [dict(upgrades[1], fixed=["tests/test_independent.py::test_a", "tests/test_independent.py::test_b"])]
    text = drift.report(upgrades, dict(tests=10, failures=2, errors=0, skipped=0),
                        {"tests/test_independent.py::test_a": "", "tests/test_independent.py::test_b": ""},
                        blame, {}, 1.0, 2.0)
    assert text.startswith("drift lane: BROKEN - 2 of 10 tests fail")
    assert "kernels 0.19.1 (new, required by transformers) breaks 2 tests (they pass without it)" in text
    assert "transformers 5.24.0 -> 5.25.0" in text
    # never a line CI could read as the pinned lane's pytest result
    assert not re.search(r"^\s*\d+ passed, \d+ failed", text, re.M)


def test_report_green():
    text = drift.report([], dict(tests=10, failures=0, errors=0, skipped=1), {}, [], {}, 1.0, 2.0)
    assert text.startswith("drift lane: GREEN - 10 tests, 0 failed")


FAKE_PYTHON = """#!/usr/bin/env bash
# stands in for the venv's python: records pip calls and the constraints they got
log="$(dirname "$0")/../calls"
if [ "$1" = "-c" ]; then
  case "$2" in
    "import torch") [ -e "$(dirname "$0")/../has_torch" ]; exit $? ;;
    *torch.__version__.split*) echo "torch==2.11.0"; exit 0 ;;
    *torch.__version__*) echo "2.11.0+cu130"; exit 0 ;;
    *) echo "$(dirname "$0")/.."; exit 0 ;;
  esac
fi
echo "$*" >> "$log"
while [ $# -gt 0 ]; do
  if [ "$1" = "-c" ]; then cp "$2" "$(dirname "$0")/../constraints.used"; fi
  shift
done
"""


@pytest.mark.parametrize("preinstalled", [True, False])
def test_setup_pins_and_keeps_an_existing_torch(tmp_path, preinstalled):
    """scripts/setup.sh itself, with a stand-in python: the lock is applied; an existing torch
    is not reinstalled and its build's pins (triton) are dropped; none gets the pinned CPU torch."""
    (tmp_path / "bin").mkdir()
    fake = tmp_path / "bin" / "python"
    fake.write_text(FAKE_PYTHON)
    fake.chmod(0o755)
    if preinstalled:
        (tmp_path / "has_torch").touch()
    env = {k: v for k, v in os.environ.items() if k not in ("GDN_TORCH_SPEC", "GDN_LATEST")}
    env.update(VIRTUAL_ENV=str(tmp_path), PATH="/usr/bin:/bin")
    subprocess.run(["bash", str(ROOT / "scripts" / "setup.sh"), "dev"], env=env, check=True, capture_output=True)
    calls = (tmp_path / "calls").read_text().splitlines()
    used = drift.read_pins((tmp_path / "constraints.used").read_text().splitlines())
    assert any(".[dev]" in c for c in calls)
    assert used["transformers"] == drift.read_pins((ROOT / "constraints.txt").read_text().splitlines())["transformers"]
    gpu_machine = shutil.which("nvidia-smi", path=env["PATH"]) is not None or os.path.exists("/dev/kfd")
    assert ("triton" in used) is (not preinstalled and not gpu_machine)
    torch_installs = [c for c in calls if re.search(r"install .*\btorch==", c) and "-e" not in c]
    assert (torch_installs == []) is preinstalled, calls


@pytest.mark.parametrize("script,tool,code", [("smoke.sh", "gdn-harness", 1), ("smoke.sh", "gdn-harness", 2),
                                              ("test.sh", "python", 1)])
def test_readme_commands_pass_the_exit_code_through(tmp_path, script, tool, code):
    """The README's commands exit as the harness (1 a correctness failure, 2 a usage error) or
    pytest does, which `make` cannot (it reports every failing recipe as 2)."""
    (tmp_path / "bin").mkdir()
    fake = tmp_path / "bin" / "python"
    fake.write_text(FAKE_PYTHON.replace('echo "$*" >> "$log"',
                                        f'[ "$1" = "-m" ] && [ "$2" = "pytest" ] && exit {code}\necho "$*" >> "$log"'))
    fake.chmod(0o755)
    (tmp_path / "has_torch").touch()
    harness = tmp_path / "bin" / "gdn-harness"
    harness.write_text(f"#!/usr/bin/env bash\nexit {code}\n")
    harness.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if k not in ("GDN_TORCH_SPEC", "GDN_LATEST")}
    env.update(VIRTUAL_ENV=str(tmp_path), PATH="/usr/bin:/bin")
    res = subprocess.run(["bash", str(ROOT / "scripts" / script)], env=env, capture_output=True, text=True)
    assert res.returncode == code, res.stderr
