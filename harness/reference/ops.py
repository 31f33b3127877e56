"""The op table's bottom half: every op the harness knows, declared once, next to its
reference function (``@gdn_op(...)``).

An op's `name` is the Backend method a fast path implements (vLLM's kernel name); its
`kind` (one of `KINDS`, which also orders the table: the pipeline's order) and `roles`
(`ROLES`) are what the stages branch on - the backend API lists ops from here, diagnosis
picks its hypotheses by role, bench and the fault zoo select ops by role. `returns` names
the reference's return values (None: not compared). The sample builders, variants and bench
shapes of each op sit in its `harness.cases.opcheck.OpInfo` (docs/new_op.md).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, FrozenSet, Optional, Tuple

from ..layouts.projection import unpack_qkvz_ba

# the op's place in the layer, in pipeline order
KINDS = ("projection", "conv", "gating", "chunk", "recurrent", "norm")
# what else an op serves: batch kinds it runs on, gating computed inside it (raw a / b in),
# states written at block boundaries (prefix caching)
ROLES = frozenset({"prefill", "decode", "spec", "gating", "checkpoints"})


@dataclass(frozen=True)
class OpDecl:
    name: str
    reference: Callable
    kind: str
    roles: FrozenSet[str]
    returns: Tuple[Optional[str], ...]      # names of the reference's return values (None: not compared)
    index: int = 0                          # declaration order, within a kind

    def has(self, role: str) -> bool:
        """`role` is the op's kind or one of its roles."""
        return role == self.kind or role in self.roles


_DECLS: Dict[str, OpDecl] = {}


def declare(name: str, reference: Callable, kind: str, roles=(), returns: Tuple[Optional[str], ...] = ()) -> OpDecl:
    """Add op `name` to the table (a name declared twice, or an unknown kind / role, fails)."""
    if kind not in KINDS:
        raise ValueError(f"op {name}: kind {kind!r} is not one of {KINDS}")
    unknown = set(roles) - ROLES
    if unknown:
        raise ValueError(f"op {name}: unknown roles {sorted(unknown)} (known: {sorted(ROLES)})")
    decl = OpDecl(name, reference, kind, frozenset(roles), tuple(returns), len(_DECLS))
    old = _DECLS.get(name)
    if old is not None:
        # a module run again (the fault zoo's mutant copies of a reference module) keeps the first
        if (old.kind, old.roles, old.returns, old.reference.__name__) == (kind, decl.roles, decl.returns,
                                                                         reference.__name__):
            return old
        raise ValueError(f"op {name} is declared twice")
    _DECLS[name] = decl
    return decl


def undeclare(name: str) -> None:
    """Drop op `name` (tests that declare a throwaway op)."""
    _DECLS.pop(name, None)


def gdn_op(name: Optional[str] = None, *, kind: str, roles=(), returns: Tuple[Optional[str], ...] = ()):
    """Decorator: declare the function as the reference of op `name` (default its own name)."""
    def wrap(fn: Callable) -> Callable:
        declare(name or fn.__name__, fn, kind, roles, returns)
        return fn
    return wrap


def op_decls() -> Tuple[OpDecl, ...]:
    """Every declared op, in pipeline order (by kind, then declaration)."""
    return tuple(sorted(_DECLS.values(), key=lambda d: (KINDS.index(d.kind), d.index)))


def op_decl(name: str) -> OpDecl:
    return _DECLS[name]


def is_op(name: str) -> bool:
    """`name` is a declared op (a dict lookup: FilledOps asks on every op call)."""
    return name in _DECLS


def op_names(*roles: str) -> Tuple[str, ...]:
    """Names of the ops that have every one of `roles` (kinds count as roles), in table order."""
    return tuple(d.name for d in op_decls() if all(d.has(r) for r in roles))


def has_role(op: str, role: str) -> bool:
    d = _DECLS.get(op)
    return d is not None and d.has(role)


declare("unpack_qkvz_ba", unpack_qkvz_ba, "projection", ("prefill", "decode", "spec"),
        ("q", "k", "v", "z", "b", "a"))
