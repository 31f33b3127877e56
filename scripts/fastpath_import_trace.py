"""Which third-party packages the fast-path backends' kernel modules import (the carry list of
scripts/fetch_fastpath_packages.sh). Run here on CPU with the packages unpacked / installed
under the given site dirs (CPython-3.11 builds of the compiled ones serve for the trace):

    python scripts/fastpath_import_trace.py SITE_DIR [SITE_DIR ...]

Prints the top-level modules the imports pulled in, and, with --block NAME (repeatable), runs
the imports as if NAME were absent (to tell a required dependency from an optional one).
"""
import argparse
import importlib
import importlib.abc
import site
import sys

MODULES = [
    "flashinfer.gdn_prefill", "flashinfer.gdn_decode",                            # flashinfer, vllm@flashinfer
    "sglang.srt.layers.attention.linear.kernels.gdn_triton", "sglang.srt.layers.attention.linear.utils",
    "sglang.srt.utils", "sglang.kernels.ops.attention.linear.fused_gdn_gating",
    "sglang.srt.layers.attention.linear.kernels.gdn_flashinfer",
]


class _Block(importlib.abc.MetaPathFinder):
    def __init__(self, names):
        self.names = set(names)

    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in self.names:
            raise ModuleNotFoundError(f"No module named '{name}' (blocked)")
        return None


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("sites", nargs="+")
    ap.add_argument("--block", action="append", default=[])
    ap.add_argument("--module", action="append", help="modules to import (default: the backends')")
    args = ap.parse_args()
    for s in args.sites:
        site.addsitedir(s)              # processes .pth files (nvidia_cutlass_dsl's)
    if args.block:
        sys.meta_path.insert(0, _Block(args.block))
    before = set(sys.modules)
    failed = {}
    for m in args.module or MODULES:
        try:
            importlib.import_module(m)
        except Exception as e:  # noqa: BLE001 - the trace reports, never stops
            failed[m] = f"{type(e).__name__}: {e}"
    new = sorted({m.split(".")[0] for m in set(sys.modules) - before if not m.startswith("_")}
                 - set(sys.stdlib_module_names))
    print("third-party top-level modules imported:", " ".join(new))
    for m, why in failed.items():
        print(f"FAILED {m}: {why}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
