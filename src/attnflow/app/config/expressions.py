"""The expression language of initial densities: whitelisted numpy expressions.

``[initial] type = "expression"`` gives a density as a formula such as
``"1 + 0.5 * cos(3 * theta)"``. :func:`compile_expression` parses it with :mod:`ast`, accepts
only the nodes, names and calls listed here (no attributes, no keywords, no strings, no
builtins) and returns a vectorised function of the points.
"""

from __future__ import annotations

import ast
import math
from collections.abc import Callable
from typing import Any

import numpy as np

from attnflow.app.config.values import ConfigError, is_number, show

__all__ = ["CONSTANTS", "FUNCTIONS", "compile_expression", "variables"]

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


def compile_expression(key: str, text: str, d: int) -> Callable[[np.ndarray], np.ndarray]:
    """A density ``(n, d) -> (n,)`` from a numpy expression in a restricted language.

    Variables: ``X`` (the (n, d) points), ``x``, ``y``, ``z`` (coordinates), ``r = |X|``,
    ``theta = atan2(y, x)``, ``phi = arccos(z / r)`` (d = 3); constants ``pi``, ``e``; the
    numpy functions in :data:`FUNCTIONS`; arithmetic, comparisons, ``&``, ``|``, indexing.
    Raises :class:`ConfigError` naming ``key`` for anything else.
    """
    names = variables(d)
    allowed = set(names) | set(FUNCTIONS) | set(CONSTANTS)
    try:
        tree = ast.parse(text, mode="eval")
    except SyntaxError as e:
        raise ConfigError(key, f"invalid expression {show(text)}: {e.msg}") from None
    for node in ast.walk(tree):
        if not isinstance(node, _NODES):
            raise ConfigError(
                key, f"invalid expression {show(text)}: {type(node).__name__} is not allowed"
            )
        if isinstance(node, ast.Name) and node.id not in allowed:
            raise ConfigError(
                key,
                f"invalid expression {show(text)}: unknown name {node.id!r} (variables: "
                f"{', '.join(names)}; constants: pi, e; functions: "
                f"{', '.join(FUNCTIONS)})",
            )
        if isinstance(node, ast.Call) and (
            not isinstance(node.func, ast.Name) or node.func.id not in FUNCTIONS or node.keywords
        ):
            raise ConfigError(key, f"invalid expression {show(text)}: only calls of functions")
        if isinstance(node, ast.Constant) and not is_number(node.value):
            raise ConfigError(key, f"invalid expression {show(text)}: only numeric constants")
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
