#!/usr/bin/env python3
"""The drift lane: the tests on the newest versions pyproject.toml allows.

    python3 scripts/drift.py [--venv DIR] [--report-dir DIR] [--write-lock] [--always-test] [-- PYTEST ARGS]

Builds a scratch virtualenv (`scripts/setup.sh` with GDN_LATEST=1: everything at the newest
allowed version, torch held at the pinned one), lists what differs from constraints.txt and
runs the tests (not when nothing differs: the pinned lane ran them; `--always-test` forces it). When tests fail, each upgraded package is put back to its pinned version
alone (`pip install NAME==PINNED --no-deps`) and the failing tests re-run: a package whose
downgrade makes tests pass again is named as the upgrade that broke them. Packages whose
files appear in the failures' tracebacks are tried first. The report goes to the console and
to REPORT_DIR/drift.md and drift.json (pytest's own output: junit.log). Exit 0: green; 1: tests fail on the newest versions;
2: the lane itself could not run (setup failed). `--write-lock` rewrites constraints.txt from
the scratch environment, only when it is green.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LOCK = ROOT / "constraints.txt"
EXTRAS = "dev,fla,triton,eval"


def canon(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def read_pins(lines) -> dict:
    """{canonical name: (name, version)} of `name==version` lines (comments and +local dropped)."""
    pins = {}
    for line in lines:
        line = line.split("#", 1)[0].strip()
        if "==" in line and not line.startswith("-e"):
            name, version = line.split("==", 1)
            pins[canon(name)] = (name.strip(), version.strip().split("+")[0])
    return pins


def freeze(py: Path) -> list:
    out = subprocess.run([str(py), "-m", "pip", "freeze", "--exclude-editable", "--disable-pip-version-check"],
                         capture_output=True, text=True, check=True).stdout
    return out.splitlines()


def top_level_dirs(py: Path, names) -> dict:
    """{canonical name: [top-level folders / modules it installs]}, to find it in tracebacks."""
    code = ("import importlib.metadata as m, json, sys\n"
            "out = {}\n"
            "for n in sys.argv[1:]:\n"
            "    try: files = m.files(n) or []\n"
            "    except m.PackageNotFoundError: files = []\n"
            "    out[n] = sorted({str(f).split('/')[0] for f in files if '.dist-info' not in str(f)\n"
            "                     and not str(f).startswith('..')})\n"
            "print(json.dumps(out))\n")
    res = subprocess.run([str(py), "-c", code, *names], capture_output=True, text=True)
    return json.loads(res.stdout) if res.returncode == 0 else {}


def node_id(classname: str, name: str) -> str:
    """junit classname + name -> pytest node id (a class inside the module when the dotted
    path is not a file)."""
    parts = classname.split(".")
    for cut in range(len(parts), 0, -1):
        path = "/".join(parts[:cut]) + ".py"
        if (ROOT / path).exists():
            return "::".join([path, *parts[cut:], name])
    return f"{classname}::{name}"


def run_pytest(py: Path, args, xml: Path):
    """Run pytest; return ({node id: failure text} of failed / errored tests, counts, rc)."""
    cmd = [str(py), "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={xml}", *args]
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", "1")      # one torch thread per xdist worker: they share the cores
    with open(xml.with_suffix(".log"), "w") as log:  # the console keeps only the lane's own summary
        rc = subprocess.run(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT).returncode
    failed, counts = {}, dict(tests=0, failures=0, errors=0, skipped=0)
    if xml.exists():
        for suite in ET.parse(xml).getroot().iter("testsuite"):
            for k in counts:
                counts[k] += int(suite.get(k, 0))
        for case in ET.parse(xml).getroot().iter("testcase"):
            bad = case.find("failure") if case.find("failure") is not None else case.find("error")
            if bad is not None:
                failed[node_id(case.get("classname", ""), case.get("name", ""))] = (
                    (bad.get("message") or "") + "\n" + (bad.text or ""))
    return failed, counts, rc


def pip_one(py: Path, name: str, version) -> bool:
    """Install name==version alone, or uninstall name when version is None."""
    cmd = (["install", "-q", "--no-deps", f"{name}=={version}"] if version else ["uninstall", "-y", "-q", name])
    return subprocess.run([str(py), "-m", "pip", *cmd, "--disable-pip-version-check"], cwd=ROOT).returncode == 0


def required_by(py: Path, name: str) -> str:
    out = subprocess.run([str(py), "-m", "pip", "show", name], capture_output=True, text=True).stdout
    return next((line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Required-by")), "")


def attribute(py: Path, upgrades: list, failed: dict, xml: Path, budget_s: float, max_tries: int):
    """Put each upgraded package back to its pin alone (a package the lock does not have:
    uninstalled) and re-run the failing tests: the ones that pass again are charged to that
    upgrade if they fail again once it is back. Returns (blame rows, still unexplained, flaky:
    passed on a re-run with the upgrade in place)."""
    text = "\n".join(failed.values())
    dirs = top_level_dirs(py, [u["name"] for u in upgrades])

    def in_traceback(u):
        return any(re.search(rf"site-packages/{re.escape(d)}[/.]", text) for d in dirs.get(u["name"], []))

    order = sorted(upgrades, key=lambda u: not in_traceback(u))
    unexplained, blame, flakes, start = dict(failed), [], [], time.monotonic()
    for tries, u in enumerate(order):
        if not unexplained or tries >= max_tries or time.monotonic() - start > budget_s:
            break
        if not pip_one(py, u["name"], u["pinned"]):
            blame.append(dict(u, fixed=[], note=f"could not put back {u['name']} {u['pinned']}"))
            continue
        still, _, _ = run_pytest(py, list(unexplained), xml)
        passed = set(unexplained) - set(still)
        pip_one(py, u["name"], u["newest"])
        if not passed:
            continue
        # charged only if they fail again with the upgrade back: a test that passes both
        # ways is flaky, not broken by this package
        again, _, _ = run_pytest(py, sorted(passed), xml)
        fixed, flaky = sorted(passed & set(again)), sorted(passed - set(again))
        if fixed:
            blame.append(dict(u, fixed=fixed, in_traceback=in_traceback(u)))
        for t in passed:
            unexplained.pop(t)
        flakes.extend(flaky)
    return blame, unexplained, flakes


def write_lock(py: Path) -> None:
    header = [line for line in LOCK.read_text().splitlines() if line.startswith("#")]
    marked = {canon(n) for n, _ in read_pins(line for line in LOCK.read_text().splitlines()
                                             if "# torch build" in line).values()}
    body = []
    for line in freeze(py):
        name = line.split("==", 1)[0]
        line = re.sub(r"\+[^\s]+$", "", line)
        body.append(line + ("  # torch build" if canon(name) in marked else ""))
    LOCK.write_text("\n".join(header + body) + "\n")


def report(upgrades, counts, failed, blame, unexplained, setup_s, test_s, flaky=()) -> str:
    lines = []
    if not failed:
        lines.append(f"drift lane: GREEN - {counts['tests']} tests, 0 failed on the newest allowed versions "
                     f"({len(upgrades)} differ from constraints.txt)")
    else:
        lines.append(f"drift lane: BROKEN - {len(failed)} of {counts['tests']} tests fail on the newest allowed "
                     f"versions ({len(upgrades)} differ from constraints.txt); the pinned lane is unaffected")
        for b in blame:
            if b["fixed"]:
                files = sorted({t.split("::")[0] for t in b["fixed"]})
                if b["pinned"]:
                    what = f"{b['name']} {b['pinned']} -> {b['newest']}", f"they pass with {b['pinned']}"
                else:
                    what = (f"{b['name']} {b['newest']} (new, required by {b.get('required_by') or 'nothing'})",
                            "they pass without it")
                lines.append(f"  {what[0]} breaks {len(b['fixed'])} tests ({what[1]}): {', '.join(files)}")
                lines += [f"      {t}" for t in b["fixed"][:5]]
                if len(b["fixed"]) > 5:
                    lines.append(f"      ... and {len(b['fixed']) - 5} more")
        if flaky:
            lines.append(f"  flaky, passed on a re-run with the newest versions ({len(flaky)}):")
            lines += [f"      {t}" for t in flaky[:10]]
        if unexplained:
            lines.append(f"  not explained by any single upgrade ({len(unexplained)}):")
            lines += [f"      {t}" for t in list(unexplained)[:10]]
    if upgrades:
        lines.append("differs from the lock: " + ", ".join(
            f"{u['name']} {u['pinned'] or '(new)'} -> {u['newest']}" for u in upgrades))
    lines.append(f"(setup {setup_s:.0f} s, tests {test_s:.0f} s)")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--venv", default=str(ROOT / ".venv-latest"), help="scratch virtualenv (made anew)")
    ap.add_argument("--report-dir", default=str(ROOT / "reports" / "drift"))
    ap.add_argument("--write-lock", action="store_true", help="rewrite constraints.txt when green")
    ap.add_argument("--budget", type=float, default=900, help="seconds for naming the breaking upgrades")
    ap.add_argument("--max-tries", type=int, default=12, help="upgrades tried at most when naming")
    ap.add_argument("--always-test", action="store_true",
                    help="run the tests even when the newest versions are the pinned ones")
    ap.add_argument("pytest_args", nargs="*", help="after --: arguments for pytest (default: -n auto)")
    args = ap.parse_args(argv)
    venv, out = Path(args.venv), Path(args.report_dir)
    out.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(venv, ignore_errors=True)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    py = venv / "bin" / "python"
    t0 = time.monotonic()
    env = dict(os.environ, VIRTUAL_ENV=str(venv), GDN_LATEST="1")
    if subprocess.run(["bash", str(ROOT / "scripts" / "setup.sh"), EXTRAS], cwd=ROOT, env=env).returncode:
        print("drift lane: COULD NOT RUN - setup of the newest versions failed (see above)")
        return 2
    setup_s = time.monotonic() - t0
    pins, now = read_pins(LOCK.read_text().splitlines()), read_pins(freeze(py))
    upgrades = [dict(name=name, pinned=pins[c][1], newest=v) for c, (name, v) in sorted(now.items())
                if c in pins and pins[c][1] != v]
    upgrades += [dict(name=name, pinned=None, newest=v, required_by=required_by(py, name))
                 for c, (name, v) in sorted(now.items()) if c not in pins]
    if not upgrades and not args.always_test:
        # the pinned lane just ran these tests on these very versions
        text = (f"drift lane: GREEN - the newest allowed versions are constraints.txt's; tests not re-run "
                f"(the pinned lane ran them; --always-test forces it)\n(setup {setup_s:.0f} s)")
        (out / "drift.json").write_text(json.dumps(dict(green=True, counts=None, upgrades=[], failed=[], blame=[],
                                                        flaky=[], unexplained=[], tests_run=False), indent=1))
        (out / "drift.md").write_text("```\n" + text + "\n```\n")
        print("\n" + text)
        return 0
    t0 = time.monotonic()
    xml = out / "junit.xml"
    failed, counts, rc = run_pytest(py, args.pytest_args or ["-n", "auto"], xml)
    test_s = time.monotonic() - t0
    if rc not in (0, 1) and not failed:
        print(f"drift lane: COULD NOT RUN - pytest exited {rc}")
        return 2
    blame, unexplained, flaky = attribute(py, upgrades, failed, out / "attribution.xml", args.budget,
                                          args.max_tries) if failed else ([], {}, [])
    text = report(upgrades, counts, failed, blame, unexplained, setup_s, test_s, flaky)
    (out / "drift.json").write_text(json.dumps(dict(
        green=not failed, counts=counts, upgrades=upgrades, failed=sorted(failed),
        blame=blame, flaky=flaky, unexplained=sorted(unexplained)), indent=1))
    (out / "drift.md").write_text("```\n" + text + "\n```\n")
    print("\n" + text)
    if args.write_lock:
        if failed:
            print("drift lane: constraints.txt NOT rewritten (tests fail on the newest versions)")
        else:
            write_lock(py)
            print("drift lane: constraints.txt rewritten from the newest versions")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
