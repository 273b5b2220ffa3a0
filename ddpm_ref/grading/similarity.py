"""Near-copies of the reference (or of each other) among the answer cells: a flag for review, never a score.

Pasting the reference's text by hand, names changed and comments dropped, is the one cheat no grader can refuse:
the code is the student's cell and it is right. :func:`normalized` turns a definition into the tokens of its syntax
tree without docstrings, comments, type hints or formatting, every name the code binds renamed by first appearance
(afresh in each statement, so that an added or moved statement renumbers no other), the operands of ``+`` and ``*``
and each run of adjacent independent assignments in one canonical order; :func:`flags` lists the pairs whose tokens
are nearly the same, for the instructor to look at.
"""

from __future__ import annotations

import ast
import inspect
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from difflib import SequenceMatcher
from itertools import combinations

import ddpm_ref

__all__ = ["MIN_TOKENS", "THRESHOLD", "Flag", "flags", "normalized", "own", "reference_sources", "similarity"]

# Chosen on tests/mistakes.py (26 exercises: the reference against each of its ALTERNATIVES and MISTAKES, and every
# pair of them that shares under half of its lines, i.e. not two edits of one template) and the lessons' solutions,
# whole definitions first, then [in brackets] less the code the release hands out (as the class report compares):
#   independent, reference against an entry: max 0.966 [0.950] (resblock_batchnorm: the lesson prescribes every layer
#     and name of ResBlock, and its solution cell is the reference itself, 1.000), next 0.928 [0.906];
#     solution cells against the reference, ResBlock aside: max 0.930 [0.919] (p_sample); pairs of entries of at
#     least MIN_TOKENS: max 0.709 [0.667]
#   pasted (names renamed, docstrings, comments and type hints dropped, reformatted, a product's operands and, where
#     the code has them, two independent assignments swapped): min 1.000 [1.000]; the same with one extra statement
#     inserted, from MIN_TOKENS up: min 0.976 [0.976]
#   short answers: the solutions' answers of up to six statements that the lesson spells out measure up to 82 [65]
#     tokens (train_step [drop_labels]); pairs of short entries reach 0.939 [0.925] (q_sample, 66 [53] tokens)
#: definitions shorter than this (in tokens of :func:`normalized`) are never flagged
MIN_TOKENS = 100
#: two definitions at least this similar are flagged
THRESHOLD = 0.97

_DEFINITIONS = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)


@dataclass
class Flag:
    """``student``'s ``exercise`` is ``similarity``-close to ``other``: ``"reference"`` or another student's id."""

    student: str
    exercise: str
    other: str
    similarity: float


def _definition(tree: ast.Module, name: str | None) -> ast.AST:
    """The last top-level definition called ``name`` in ``tree`` (the one that counts), or the whole tree."""
    for node in reversed(tree.body):
        if isinstance(node, _DEFINITIONS) and node.name == name:
            return node
    return tree


class _Normalize(ast.NodeTransformer):
    """Drops docstrings (any bare string statement) and type annotations; puts every run of adjacent assignments
    that do not depend on each other in one canonical order (see :func:`_canonical_order`)."""

    def __init__(self, bound: set[str]) -> None:
        self.bound = bound

    def generic_visit(self, node: ast.AST) -> ast.AST:
        super().generic_visit(node)
        for name in ("body", "orelse", "finalbody"):
            body = getattr(node, name, None)
            if isinstance(body, list) and body and isinstance(body[0], ast.stmt):
                kept = [s for s in body if not _is_string_statement(s)] or [ast.Pass()]
                setattr(node, name, _canonical_order(kept, self.bound))
        return node

    def visit_arg(self, node: ast.arg) -> ast.arg:
        node.annotation = None
        return node

    def visit_FunctionDef(self, node: ast.FunctionDef) -> ast.AST:
        node.returns = None
        return self.generic_visit(node)

    visit_AsyncFunctionDef = visit_FunctionDef

    def visit_AnnAssign(self, node: ast.AnnAssign) -> ast.AST | None:
        if node.value is None:
            return None
        return self.generic_visit(ast.Assign(targets=[node.target], value=node.value))

    def visit_BinOp(self, node: ast.BinOp) -> ast.AST:
        """``a * b`` and ``b * a`` (and ``+``) alike: the operands in the order of their name-free tokens."""
        self.generic_visit(node)
        if isinstance(node.op, (ast.Add, ast.Mult)) and _key(node.right, self.bound) < _key(node.left, self.bound):
            node.left, node.right = node.right, node.left
        return node


def _is_string_statement(node: ast.stmt) -> bool:
    return isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str)


def _chain(node: ast.AST) -> str | None:
    """``a.b.c`` for a name, attribute or subscript chain (``a.b[i].c`` is ``a.b.c``), else None."""
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, (ast.Attribute, ast.Subscript)):
        base = _chain(node.value)
        return base if base is None or isinstance(node, ast.Subscript) else f"{base}.{node.attr}"
    return None


def _accesses(node: ast.AST, reads: set[str], writes: set[str]) -> None:
    """Adds the longest chains ``node`` reads and writes (``self.norm1 = …`` writes ``self.norm1``, reads nothing)."""
    chain = _chain(node)
    if chain is None:
        for child in ast.iter_child_nodes(node):
            _accesses(child, reads, writes)
        return
    (reads if isinstance(getattr(node, "ctx", None), ast.Load) else writes).add(chain)
    while isinstance(node, (ast.Attribute, ast.Subscript)):  # the indices along the chain are read
        if isinstance(node, ast.Subscript):
            _accesses(node.slice, reads, writes)
        node = node.value


def _overlap(a: set[str], b: set[str]) -> bool:
    return any(x == y or x.startswith(f"{y}.") or y.startswith(f"{x}.") for x in a for y in b)


def _depends(first: tuple[set[str], set[str]], then: tuple[set[str], set[str]]) -> bool:
    """Whether a statement with (reads, writes) ``then`` must stay after one with ``first``."""
    return _overlap(first[1], then[0] | then[1]) or _overlap(then[1], first[0])


def _canonical_order(body: list[ast.stmt], bound: set[str]) -> list[ast.stmt]:
    """``body`` with each run of adjacent plain assignments in one order that keeps their dependencies, the same
    for any harmless reordering of the run: the ready assignment with the smallest name-free tokens goes first."""
    out: list[ast.stmt] = []
    run: list[ast.stmt] = []
    for stmt in [*body, None]:
        if isinstance(stmt, ast.Assign):
            run.append(stmt)
            continue
        out += _topological(run, bound)
        run = []
        if stmt is not None:
            out.append(stmt)
    return out


def _topological(run: list[ast.stmt], bound: set[str]) -> list[ast.stmt]:
    effects = []
    for stmt in run:
        reads: set[str] = set()
        writes: set[str] = set()
        _accesses(stmt, reads, writes)
        effects.append((reads, writes))
    after = [{i for i in range(j) if _depends(effects[i], effects[j])} for j in range(len(run))]
    keys = [_key(stmt, bound) for stmt in run]
    placed: list[int] = []
    while len(placed) < len(run):
        ready = [j for j in range(len(run)) if j not in placed and after[j] <= set(placed)]
        placed.append(min(ready, key=lambda j: (keys[j], j)))
    return [run[j] for j in placed]


def _bound(tree: ast.AST) -> set[str]:
    """Every name ``tree`` binds: assignment, loop, with and comprehension targets, arguments, definitions,
    imports, exception and match captures, global/nonlocal declarations."""
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and not isinstance(node.ctx, ast.Load):
            names.add(node.id)
        elif isinstance(node, ast.arg):
            names.add(node.arg)
        elif isinstance(node, (*_DEFINITIONS, ast.ExceptHandler, ast.MatchAs, ast.MatchStar)) and node.name:
            names.add(node.name)
        elif isinstance(node, ast.alias):
            names.add((node.asname or node.name).split(".")[0])
        elif isinstance(node, (ast.Global, ast.Nonlocal)):
            names.update(node.names)
    return names


class _Tokens:
    """The pre-order tokens of a tree, bound names renamed ``_0``, ``_1``, … by first appearance in each statement
    (in a compound statement, in its header)."""

    def __init__(self, bound: set[str], blank: bool = False) -> None:
        self.bound = bound
        self.blank = blank  # every bound name is ``_``
        self.canonical: dict[str, str] = {}

    def name(self, name: str | None) -> str:
        if name is None or name not in self.bound:
            return str(name)
        return "_" if self.blank else self.canonical.setdefault(name, f"_{len(self.canonical)}")

    def payload(self, node: ast.AST) -> Iterator[str]:
        """The tokens a node carries besides its type: names, attribute names, constants."""
        if isinstance(node, ast.Name):
            yield self.name(node.id)
        elif isinstance(node, ast.arg):
            yield self.name(node.arg)
        elif isinstance(node, (*_DEFINITIONS, ast.ExceptHandler, ast.MatchAs, ast.MatchStar)):
            yield self.name(node.name)
        elif isinstance(node, ast.alias):
            yield node.name
            yield self.name((node.asname or node.name).split(".")[0])
        elif isinstance(node, (ast.Global, ast.Nonlocal)):
            yield from (self.name(n) for n in node.names)
        elif isinstance(node, ast.Attribute):
            yield node.attr
        elif isinstance(node, ast.keyword):
            yield str(node.arg)
        elif isinstance(node, ast.Constant):
            yield repr(node.value)
        elif isinstance(node, ast.ImportFrom):
            yield f"{'.' * node.level}{node.module or ''}"

    def walk(self, node: ast.AST) -> Iterator[str]:
        if isinstance(node, ast.expr_context):
            return
        outer = self.canonical
        if isinstance(node, ast.stmt):  # numbered afresh in each statement: one added or moved shifts no other
            self.canonical = {}
        yield type(node).__name__
        yield from self.payload(node)
        for child in ast.iter_child_nodes(node):
            yield from self.walk(child)
        self.canonical = outer


def _key(node: ast.AST, bound: set[str]) -> list[str]:
    """The tokens of ``node`` with every bound name ``_``: the same whatever the names (for canonical orders)."""
    return list(_Tokens(bound, blank=True).walk(node))


def normalized(source: str, name: str | None = None) -> list[str] | None:
    """The tokens of ``source`` (only its top-level definition ``name``, if it has one) with docstrings, type hints,
    comments and formatting gone and the names it binds renamed by first appearance; None if it does not parse."""
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError):
        return None
    node = _definition(tree, name)
    bound = _bound(node)
    return list(_Tokens(bound).walk(_Normalize(bound).visit(node)))


def own(tokens: list[str], given: list[str] | None) -> list[str]:
    """``tokens`` without the runs that match the ``given`` code (what the lesson handed out around the exercise)."""
    if not given:
        return tokens
    keep = [True] * len(tokens)
    for block in SequenceMatcher(None, given, tokens, autojunk=False).get_matching_blocks():
        keep[block.b:block.b + block.size] = [False] * block.size
    return [t for t, k in zip(tokens, keep, strict=True) if k]


def similarity(a: list[str], b: list[str]) -> float:
    """How alike two token lists are, in [0, 1] (1: the same)."""
    return SequenceMatcher(None, a, b, autojunk=False).ratio()


def _similar(a: list[str] | None, b: list[str] | None) -> float | None:
    """``similarity(a, b)`` if both are long enough and at least :data:`THRESHOLD` alike, else None."""
    if a is None or b is None or min(len(a), len(b)) < MIN_TOKENS:
        return None
    matcher = SequenceMatcher(None, a, b, autojunk=False)
    if matcher.real_quick_ratio() < THRESHOLD or matcher.quick_ratio() < THRESHOLD:  # cheap upper bounds first
        return None
    ratio = matcher.ratio()
    return ratio if ratio >= THRESHOLD else None


def _exercise_flags(exercise: str, tokens: dict[str, list[str] | None], reference: list[str] | None) -> Iterator[Flag]:
    for student in sorted(tokens):
        score = _similar(tokens[student], reference)
        if score is not None:
            yield Flag(student, exercise, "reference", score)
    for student, other in combinations(sorted(tokens), 2):
        score = _similar(tokens[student], tokens[other])
        if score is not None:
            yield Flag(student, exercise, other, score)


def flags(code: dict[str, dict[str, str]], reference: dict[str, str],
          given: dict[str, str] | None = None) -> list[Flag]:
    """Every student's exercise as alike as :data:`THRESHOLD` to the reference, or to another student's (one flag
    a pair, ``student < other``). ``code[student][exercise]`` is an answer cell, ``reference[exercise]`` the
    reference's source, ``given[exercise]`` the answer cell as handed out: only what differs from it is compared."""
    exercises = sorted({exercise for answers in code.values() for exercise in answers})
    found: list[Flag] = []
    for exercise in exercises:
        handed_out = (given or {}).get(exercise)
        known = None if handed_out is None else normalized(handed_out, exercise)
        answers = {s: _own_tokens(a[exercise], exercise, known) for s, a in code.items() if exercise in a}
        found += _exercise_flags(exercise, answers, _own_tokens(reference.get(exercise), exercise, known))
    return found


def _own_tokens(source: str | None, exercise: str, given: list[str] | None) -> list[str] | None:
    """:func:`own` tokens of ``source`` (None when there is none or it does not parse)."""
    tokens = None if source is None else normalized(source, exercise)
    return None if tokens is None else own(tokens, given)


def reference_sources(exercises: Iterable[str]) -> dict[str, str]:
    """The source of each exercise's reference definition in ``ddpm_ref`` (exercises it lacks are left out)."""
    sources: dict[str, str] = {}
    for exercise in exercises:
        try:
            sources[exercise] = inspect.getsource(getattr(ddpm_ref, exercise))
        except (AttributeError, TypeError, OSError):
            continue
    return sources
