"""The linter configured in pyproject.toml ([tool.ruff]) passes on the whole tree, so a
`# noqa` in it names a rule that would fire (RUF100 reports any that does not)."""
import io
import os
import subprocess
import sys
import tokenize
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_ruff_clean():
    ruff = Path(sys.executable).with_name("ruff")
    if not ruff.exists() and not os.environ.get("GDN_REQUIRE_DEV_TOOLS"):   # scripts/test.sh sets it
        pytest.skip("the dev extra's ruff is not installed here")
    r = subprocess.run([str(ruff), "check", "--no-cache", "--output-format", "concise", str(ROOT)], cwd=ROOT,
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]


def _own_python_files():
    """The tree's .py files; hidden folders (venvs, .venv-latest, caches) and reports/ are not walked."""
    for top, dirs, files in os.walk(ROOT):
        dirs[:] = [d for d in dirs if not d.startswith(".") and d != "reports"]
        yield from (Path(top) / f for f in files if f.endswith(".py"))


def test_every_noqa_says_why():
    """`# noqa: RULE - reason` in every comment that silences the linter: a rule and a reason."""
    bare = []
    for path in _own_python_files():
        for tok in tokenize.generate_tokens(io.StringIO(path.read_text()).readline):
            if tok.type == tokenize.COMMENT and "noqa" in tok.string:
                after = tok.string.split("noqa", 1)[1]
                if not after.startswith(":") or " - " not in after:
                    bare.append(f"{path.relative_to(ROOT)}:{tok.start[0]}")
    assert not bare, bare
