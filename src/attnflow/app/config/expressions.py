"""The expression language of initial densities: whitelisted numpy expressions.

``[initial] type = "expression"`` gives a density as a formula such as
``"1 + 0.5 * cos(3 * theta)"``. :func:`compile_expression` parses it with :mod:`ast`, accepts
only the nodes, names and calls listed here (no attributes, no keywords, no strings, no
builtins) and returns a vectorised function of the points.

Evaluation has a cost bound, fixed before anything is evaluated, so that a hostile expression
(a tower of powers ``9**9**9``, a huge literal, deep nesting) is refused at once, the same way
on every MPI rank: the text, the number of nodes and the nesting depth are bounded
(:data:`MAX_CHARS`, :data:`MAX_NODES`, :data:`MAX_DEPTH`); every number is a float64
(``np.float64``: Python's unbounded integers never appear, so ``**`` and ``*`` cost one
floating point operation per point); indices (``X[:, 0]``) are integer literals only; constant
sub-expressions are folded in float64 and one that overflows (is not finite) is refused. The
cost of an evaluation is then at most a few operations per node and point.
"""

from __future__ import annotations

import ast
import math
from collections.abc import Callable
from typing import Any

import numpy as np

from attnflow.app.config.values import ConfigError, is_number, show

__all__ = [
    "CONSTANTS",
    "FUNCTIONS",
    "MAX_CHARS",
    "MAX_DEPTH",
    "MAX_NODES",
    "compile_expression",
    "variables",
]

#: Longest expression text (characters).
MAX_CHARS = 10_000
#: Most nodes of the syntax tree.
MAX_NODES = 5_000
#: Deepest nesting of the syntax tree.
MAX_DEPTH = 200
#: Largest absolute value of an index literal.
_MAX_INDEX = 2**31

#: The numpy functions an expression may call.
FUNCTIONS: dict[str, Callable] = {
    name: getattr(np, name)
    for name in (
        "sin",
        "cos",
        "tan",
        "arcsin",
        "arccos",
        "arctan",
        "arctan2",
        "sinh",
        "cosh",
        "tanh",
        "exp",
        "log",
        "sqrt",
        "abs",
        "minimum",
        "maximum",
        "where",
        "heaviside",
    )
}
#: The constants an expression may name.
CONSTANTS = {"pi": math.pi, "e": math.e}
_NODES = (
    ast.Expression,
    ast.BinOp,
    ast.UnaryOp,
    ast.Compare,
    ast.Call,
    ast.Name,
    ast.Load,
    ast.Constant,
    ast.Subscript,
    ast.Slice,
    ast.Tuple,
    ast.Add,
    ast.Sub,
    ast.Mult,
    ast.Div,
    ast.Pow,
    ast.Mod,
    ast.USub,
    ast.UAdd,
    ast.BitAnd,
    ast.BitOr,
    ast.Lt,
    ast.LtE,
    ast.Gt,
    ast.GtE,
)


def variables(d: int) -> tuple[str, ...]:
    """The variables of an expression in dimension ``d``."""
    names = ["X", "r", *["x", "y", "z"][: min(d, 3)]]
    if d >= 2:
        names.append("theta")
    if d == 3:
        names.append("phi")
    return tuple(names)


def _short(text: str) -> str:
    """The expression as shown in a message (at most 60 characters)."""
    return show(text if len(text) <= 60 else text[:57] + "...")


def _depth(tree: ast.AST) -> int:
    """Depth of the tree (iterative: a deep tree cannot exhaust the stack here)."""
    deepest, stack = 0, [(tree, 1)]
    while stack:
        node, k = stack.pop()
        deepest = max(deepest, k)
        if k > MAX_DEPTH:
            break
        stack.extend((c, k + 1) for c in ast.iter_child_nodes(node))
    return deepest


def _index_ok(node: ast.AST) -> bool:
    """An index: integer literals (optionally negated), slices and tuples of them."""
    if isinstance(node, ast.Tuple):
        return all(_index_ok(e) for e in node.elts)
    if isinstance(node, ast.Slice):
        return all(p is None or _index_ok(p) for p in (node.lower, node.upper, node.step))
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        node = node.operand
    return (
        isinstance(node, ast.Constant)
        and isinstance(node.value, int)
        and not isinstance(node.value, bool)
        and abs(node.value) < _MAX_INDEX
    )


_BINARY: dict[type, Callable] = {
    ast.Add: np.add,
    ast.Sub: np.subtract,
    ast.Mult: np.multiply,
    ast.Div: np.true_divide,
    ast.Pow: np.power,
    ast.Mod: np.mod,
}
_UNARY: dict[type, Callable] = {ast.USub: np.negative, ast.UAdd: np.positive}


class _Floats(ast.NodeTransformer):
    """Numbers become floats (not in indices); constant arithmetic is folded in float64 and
    must stay finite (so no operation of two Python numbers is left to evaluate)."""

    def __init__(self, key: str, text: str) -> None:
        self.key, self.text = key, text

    def visit_Subscript(self, node: ast.Subscript) -> ast.AST:
        node.value = self.visit(node.value)
        return node  # the index keeps its integer literals (checked by _index_ok)

    def visit_Constant(self, node: ast.Constant) -> ast.AST:
        try:
            value = float(node.value)
        except OverflowError:
            raise ConfigError(
                self.key, f"invalid expression {_short(self.text)}: a number is too large"
            ) from None
        return ast.copy_location(ast.Constant(value), node)

    def _fold(self, node: ast.AST) -> ast.AST:
        if isinstance(node, ast.BinOp):
            op, args = _BINARY.get(type(node.op)), (node.left, node.right)
        else:
            assert isinstance(node, ast.UnaryOp)
            op, args = _UNARY.get(type(node.op)), (node.operand,)
        if op is None or not all(isinstance(a, ast.Constant) for a in args):
            return node
        with np.errstate(all="ignore"):
            value = op(*(np.float64(a.value) for a in args))  # type: ignore[union-attr]
        if not np.isfinite(value):
            raise ConfigError(
                self.key,
                f"invalid expression {_short(self.text)}: "
                f"{ast.get_source_segment(self.text, node) or ast.unparse(node)} is not a "
                "finite float64 (overflow or division by zero)",
            )
        return ast.copy_location(ast.Constant(float(value)), node)

    def visit_BinOp(self, node: ast.BinOp) -> ast.AST:
        self.generic_visit(node)
        return self._fold(node)

    def visit_UnaryOp(self, node: ast.UnaryOp) -> ast.AST:
        self.generic_visit(node)
        return self._fold(node)


def compile_expression(key: str, text: str, d: int) -> Callable[[np.ndarray], np.ndarray]:
    """A density ``(n, d) -> (n,)`` from a numpy expression in a restricted language.

    Variables: ``X`` (the (n, d) points), ``x``, ``y``, ``z`` (coordinates), ``r = |X|``,
    ``theta = atan2(y, x)``, ``phi = arccos(z / r)`` (d = 3); constants ``pi``, ``e``; the
    numpy functions in :data:`FUNCTIONS`; arithmetic, comparisons, ``&``, ``|``, indexing.
    Raises :class:`ConfigError` naming ``key`` for anything else.
    """
    names = variables(d)
    allowed = set(names) | set(FUNCTIONS) | set(CONSTANTS)
    if len(text) > MAX_CHARS:
        raise ConfigError(key, f"must be at most {MAX_CHARS} characters, got {len(text)}")
    shown = _short(text)
    try:
        tree = ast.parse(text, mode="eval")
    except (SyntaxError, ValueError, MemoryError, RecursionError) as e:
        why = e.msg if isinstance(e, SyntaxError) else type(e).__name__
        raise ConfigError(key, f"invalid expression {shown}: {why}") from None
    nodes = list(ast.walk(tree))
    if len(nodes) > MAX_NODES:
        raise ConfigError(key, f"invalid expression {shown}: more than {MAX_NODES} terms")
    if _depth(tree) > MAX_DEPTH:
        raise ConfigError(key, f"invalid expression {shown}: nested deeper than {MAX_DEPTH}")
    for node in nodes:
        if not isinstance(node, _NODES):
            raise ConfigError(
                key, f"invalid expression {shown}: {type(node).__name__} is not allowed"
            )
        if isinstance(node, ast.Name) and node.id not in allowed:
            raise ConfigError(
                key,
                f"invalid expression {shown}: unknown name {node.id!r} (variables: "
                f"{', '.join(names)}; constants: pi, e; functions: "
                f"{', '.join(FUNCTIONS)})",
            )
        if isinstance(node, ast.Call) and (
            not isinstance(node.func, ast.Name) or node.func.id not in FUNCTIONS or node.keywords
        ):
            raise ConfigError(key, f"invalid expression {shown}: only calls of functions")
        if isinstance(node, ast.Constant) and not is_number(node.value):
            raise ConfigError(key, f"invalid expression {shown}: only numeric constants")
        if isinstance(node, ast.Subscript) and not _index_ok(node.slice):
            raise ConfigError(
                key,
                f"invalid expression {shown}: an index must be integer literals, e.g. X[:, 0]",
            )
    tree = ast.fix_missing_locations(_Floats(key, text).visit(tree))
    code = compile(tree, "<initial.expression>", "eval")

    def density(points: np.ndarray) -> np.ndarray:
        X = np.asarray(points, dtype=float)
        ns: dict[str, Any] = {**FUNCTIONS, **CONSTANTS, "X": X}
        ns["r"] = np.linalg.norm(X, axis=1)
        for i, name in enumerate(["x", "y", "z"][: min(d, 3)]):
            ns[name] = X[:, i]
        if d >= 2:
            ns["theta"] = np.arctan2(X[:, 1], X[:, 0])
        if d == 3:
            with np.errstate(invalid="ignore", divide="ignore"):
                ns["phi"] = np.arccos(np.clip(X[:, 2] / ns["r"], -1.0, 1.0))
        with np.errstate(all="ignore"):
            v = eval(code, {"__builtins__": {}}, ns)  # the AST is whitelisted above
        return np.broadcast_to(np.asarray(v, dtype=float), (X.shape[0],)).copy()

    return density
