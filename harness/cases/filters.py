"""`run`'s case filters: ``-k`` expressions and ``--dtype / --layout / --tp / --mix``.

``-k`` takes pytest's expression language: words matched as case-insensitive substrings
of the case id, combined with ``and``, ``or``, ``not`` and parentheses; a repeated ``-k``
is the union. The other filters take comma-separated values checked against what the
suite offers (a value it does not have is a usage error listing the valid ones); dtypes
take the usual spellings (fp32, bf16, half, ...).
"""
from __future__ import annotations

import re
from typing import Callable, Dict, Iterable, List

from harness.errors import HarnessError

DTYPE_SPELLINGS: Dict[str, str] = {
    **dict.fromkeys(("float32", "fp32", "f32", "float"), "float32"),
    **dict.fromkeys(("bfloat16", "bf16"), "bfloat16"),
    **dict.fromkeys(("float16", "fp16", "f16", "half"), "float16"),
    **dict.fromkeys(("float64", "fp64", "f64", "double"), "float64"),
}
_TOKEN = re.compile(r"\(|\)|[^\s()]+")


def parse_k(expr: str) -> Callable[[str], bool]:
    """A matcher for one ``-k`` expression (pytest's grammar: or < and < not < parentheses)."""
    tokens = _TOKEN.findall(expr)
    pos = 0

    def bad(why: str):
        return HarnessError(f"-k {expr!r}: {why} (expressions: words matched in case ids, and / or / not, "
                            "parentheses)")

    def peek():
        return tokens[pos] if pos < len(tokens) else None

    def eat():
        nonlocal pos
        pos += 1
        return tokens[pos - 1]

    def chain(word, operand, combine):
        left = operand()
        while peek() == word:
            eat()
            left = (lambda a, b: lambda s: combine(a(s), b(s)))(left, operand())
        return left

    def or_():
        return chain("or", and_, lambda x, y: x or y)

    def and_():
        return chain("and", not_, lambda x, y: x and y)

    def not_():
        if peek() == "not":
            eat()
            inner = not_()
            return lambda s: not inner(s)
        return atom()

    def atom():
        tok = peek()
        if tok is None:
            raise bad("expected a word or '(' at the end")
        if tok == "(":
            eat()
            inner = or_()
            if peek() != ")":
                raise bad("missing ')'")
            eat()
            return inner
        if tok in (")", "and", "or"):
            raise bad(f"unexpected {tok!r}")
        word = eat().lower()
        return lambda s: word in s.lower()

    if not tokens:
        raise bad("empty expression")
    match = or_()
    if pos != len(tokens):
        raise bad(f"unexpected {tokens[pos]!r}")
    return match


def _values(args_values: List[str]) -> List[str]:
    return [v.strip() for arg in args_values for v in arg.split(",") if v.strip()]


def _choose(flag: str, given: List[str], offered: Iterable[str], canon: Callable[[str], str], suite: str,
            spellings: str = "") -> set:
    offered = sorted(set(offered), key=str)
    chosen = set()
    for v in given:
        c = canon(v)
        if c not in offered:
            raise HarnessError(f"{flag} {v}: suite {suite!r} has no such cases; valid: "
                               f"{', '.join(map(str, offered)) or '(none)'}{spellings}")
        chosen.add(c)
    return chosen


def filter_cases(cases: list, args, suite: str) -> list:
    """The cases -k / --dtype / --layout / --tp / --mix select (all when none is given);
    HarnessError (exit 2) for a value the suite does not offer or a selection left empty."""
    keep = list(cases)
    if args.dtype:
        want = _choose("--dtype", _values(args.dtype), {c.dtype for c in cases if c.level != "self"},
                       lambda v: DTYPE_SPELLINGS.get(v.lower(), v.lower()), suite,
                       " (also fp32, bf16, fp16 / half, fp64 / double)")
        keep = [c for c in keep if c.dtype in want]
    if args.layout:
        want = _choose("--layout", _values(args.layout), {c.layout for c in cases}, str.lower, suite)
        keep = [c for c in keep if c.layout in want]
    if args.tp:
        def tp(v):
            v = v.lower().removeprefix("tp")
            return int(v) if v.isdigit() else v
        want = _choose("--tp", _values(args.tp), {c.tp for c in cases}, tp, suite)
        keep = [c for c in keep if c.tp in want]
    if args.mix:
        want = _choose("--mix", _values(args.mix), {c.check for c in cases if c.level == "layer"}, str, suite)
        keep = [c for c in keep if c.level == "layer" and c.check in want]
    if not keep:
        raise HarnessError(f"no case of suite {suite!r} has all of the --dtype / --layout / --tp / --mix values "
                           "given (each alone has some)")
    if args.k:
        matchers = [parse_k(e) for e in args.k]
        hits = [c for c in keep if any(m(c.id) for m in matchers)]
        if not hits:
            checks = sorted({f"{c.level}.{c.check}" for c in keep})
            raise HarnessError(f"no case of suite {suite!r} matches -k {' / '.join(map(repr, args.k))}"
                               + (" with the other filters" if len(keep) < len(cases) else "")
                               + f"; its checks: {', '.join(checks[:40])}" + (" ..." if len(checks) > 40 else "")
                               + f"; an id looks like {keep[0].id!r}")
        keep = hits
    return keep
