"""The error of a configuration and the checks of its values, one line per problem.

:class:`ConfigError` carries the dotted key and what is allowed (``model.beta: must be > 0,
got -1``). The ``check_*`` functions validate one raw TOML value and return it converted
(or raise :class:`ConfigError` naming ``key``); :class:`Table` is one raw section that
rejects unknown keys up front; :func:`show` writes a value as it would appear in TOML.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

__all__ = [
    "ConfigError",
    "Table",
    "check_array",
    "check_bool",
    "check_choice",
    "check_float",
    "check_int",
    "check_matrix",
    "check_str",
    "check_vector",
    "choices",
    "is_int",
    "is_number",
    "show",
]

_REQUIRED = object()


class ConfigError(ValueError):
    """An invalid configuration: ``key`` is the dotted key, ``message`` what is allowed."""

    def __init__(self, key: str, message: str) -> None:
        key = str(key)  # a TOML key may hold any character: escape the unprintable ones
        self.key = "".join(c if c.isprintable() else repr(c)[1:-1] for c in key)
        self.message = " ".join(str(message).split())  # one line
        super().__init__(f"{self.key}: {self.message}" if self.key else self.message)


# -- value checks ------------------------------------------------------------------------------
def show(v: Any) -> str:
    """A value as it would be written in TOML (short)."""
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float) and math.isinf(v):
        return "inf" if v > 0 else "-inf"
    if isinstance(v, dict):
        return "a table"
    if isinstance(v, list):
        s = "[" + ", ".join(show(x) for x in v[:6]) + (", ..." if len(v) > 6 else "") + "]"
        return s if len(s) < 80 else s[:76] + "...]"
    return repr(v)


def choices(options: Iterable[str]) -> str:
    """The options, each as :func:`show` writes it, separated by commas."""
    return ", ".join(show(o) for o in options)


def is_int(v: Any) -> bool:
    """``v`` is an integer (not a bool)."""
    return isinstance(v, int) and not isinstance(v, bool)


def is_number(v: Any) -> bool:
    """``v`` is an int or a float (not a bool)."""
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def check_int(key: str, v: Any, lo: int | None = None, hi: int | None = None) -> int:
    """``v`` as an int in ``[lo, hi]`` (either bound optional)."""
    rng = (
        f" in [{lo}, {hi}]"
        if lo is not None and hi is not None
        else (f" >= {lo}" if lo is not None else "")
    )
    if not is_int(v):
        raise ConfigError(key, f"must be an integer{rng}, got {show(v)}")
    if (lo is not None and v < lo) or (hi is not None and v > hi):
        raise ConfigError(key, f"must be an integer{rng}, got {v}")
    return int(v)


def check_float(
    key: str,
    v: Any,
    *,
    gt: float | None = None,
    ge: float | None = None,
    le: float | None = None,
    lt: float | None = None,
    allow_inf: bool = False,
) -> float:
    """``v`` as a float within the given bounds (finite unless ``allow_inf``)."""
    parts = []
    if gt is not None:
        parts.append(f"> {gt:g}")
    if ge is not None:
        parts.append(f">= {ge:g}")
    if le is not None:
        parts.append(f"<= {le:g}")
    if lt is not None:
        parts.append(f"< {lt:g}")
    want = " and ".join(parts) if parts else "a finite number"
    if not is_number(v):
        raise ConfigError(key, f"must be a number {want}".replace("number a finite ", ""))
    x = float(v)
    bad = (
        math.isnan(x)
        or (math.isinf(x) and not allow_inf)
        or (gt is not None and not x > gt)
        or (ge is not None and not x >= ge)
        or (le is not None and not x <= le)
        or (lt is not None and not x < lt)
    )
    if bad:
        raise ConfigError(key, f"must be {want}, got {show(v)}")
    return x


def check_bool(key: str, v: Any) -> bool:
    """``v`` as a bool (``true``/``false``)."""
    if not isinstance(v, bool):
        raise ConfigError(key, f"must be true or false, got {show(v)}")
    return v


def check_choice(key: str, v: Any, options: Sequence[str]) -> str:
    """``v``, one of the strings ``options``."""
    if not isinstance(v, str) or v not in options:
        raise ConfigError(key, f"must be one of {choices(options)}, got {show(v)}")
    return v


def check_str(key: str, v: Any) -> str:
    """``v`` as a non-empty string."""
    if not isinstance(v, str) or not v:
        raise ConfigError(key, f"must be a non-empty string, got {show(v)}")
    return v


def check_vector(key: str, v: Any, n: int | None = None, *, what: str = "numbers") -> tuple:
    """``v`` as a tuple of finite floats (of length ``n`` if given)."""
    size = f"{n} " if n is not None else ""
    if (
        not isinstance(v, list)
        or not all(is_number(x) for x in v)
        or (n is not None and len(v) != n)
        or not v
    ):
        got = f"a list of length {len(v)}" if isinstance(v, list) else show(v)
        raise ConfigError(key, f"must be a list of {size}{what}, got {got}")
    a = tuple(float(x) for x in v)
    if not all(math.isfinite(x) for x in a):
        raise ConfigError(key, f"must hold finite {what}, got {show(v)}")
    return a


def check_matrix(key: str, v: Any, d: int, *, allow_identity: bool = False) -> tuple | None:
    """``v`` as a ``d x d`` tuple of rows; with ``allow_identity`` also ``"identity"``
    (``None``) or a number (times the identity)."""
    want = (
        f'"identity", a number (times the identity) or a {d}x{d} array of numbers'
        if allow_identity
        else f"a {d}x{d} array of numbers"
    )
    if allow_identity:
        if isinstance(v, str):
            if v != "identity":
                raise ConfigError(key, f"must be {want}, got {show(v)}")
            return None
        if is_number(v):
            x = float(v)
            if not math.isfinite(x):
                raise ConfigError(key, f"must be finite, got {show(v)}")
            return tuple(tuple(x if i == j else 0.0 for j in range(d)) for i in range(d))
    rows_ok = isinstance(v, list) and all(
        isinstance(r, list) and all(is_number(x) for x in r) for r in v
    )
    if not rows_ok:
        raise ConfigError(key, f"must be {want}, got {show(v)}")
    shape = (len(v), *({len(r) for r in v} if v else {0}))
    if len(shape) != 2 or shape != (d, d):
        got = f"{shape[0]}x{shape[1]}" if len(shape) == 2 else f"{len(v)} rows of unequal length"
        raise ConfigError(key, f"must be {want}, got a {got} array")
    m = tuple(tuple(float(x) for x in r) for r in v)
    if not all(math.isfinite(x) for r in m for x in r):
        raise ConfigError(key, "must have finite entries")
    return m


def _shape_text(shape: Sequence[object]) -> str:
    return "(" + ", ".join(map(str, shape)) + ("," if len(shape) == 1 else "") + ")"


def check_array(key: str, v: Any, shape: Sequence[int | None], names: str) -> tuple:
    """``v`` as a nested tuple of finite floats of ``shape`` (1-D or 2-D; ``None``: any size
    >= 1), e.g. ``check_array("terms[0].A", v, (3, 2), "(m, d)")``; ``names`` names the axes
    in the message (``must have shape (m, d) = (3, 2), got (2, 2)``)."""
    axes = [n.strip() for n in names.strip("()").split(",") if n.strip()]
    want = _shape_text([n if s is None else s for s, n in zip(shape, axes, strict=True)])
    if len(shape) == 1:
        ok = isinstance(v, list) and all(is_number(x) for x in v)
        got = (len(v),) if ok else None
    else:
        ok = isinstance(v, list) and all(
            isinstance(r, list) and all(is_number(x) for x in r) for r in v
        )
        lengths = {len(r) for r in v} if ok else set()
        ok = ok and len(lengths) <= 1
        got = (len(v), lengths.pop() if lengths else 0) if ok else None
    if got is None:
        what = "a list of numbers" if len(shape) == 1 else "an array (a list of equal rows)"
        raise ConfigError(key, f"must be {what} of shape {names} = {want}, got {show(v)}")
    bad = any(g < 1 or (s is not None and g != s) for g, s in zip(got, shape, strict=True))
    if bad:
        raise ConfigError(key, f"must have shape {names} = {want}, got {_shape_text(got)}")
    a = (
        tuple(float(x) for x in v)
        if len(shape) == 1
        else tuple(tuple(float(x) for x in r) for r in v)
    )
    flat = a if len(shape) == 1 else tuple(x for r in a for x in r)
    if not all(math.isfinite(x) for x in flat):
        raise ConfigError(key, "must have finite entries")
    return a


class Table:
    """One section of the raw TOML: unknown keys are rejected up front.

    ``get`` returns a value (or the default; without one, :class:`ConfigError` "required"),
    ``key`` the dotted key, ``only`` rejects keys not used in this case.
    """

    def __init__(self, raw: Mapping[str, Any], name: str, allowed: Sequence[str]) -> None:
        value = raw.get(name, {})
        if not isinstance(value, dict):
            raise ConfigError(name, f"must be a table ([{name}]), got {show(value)}")
        for k in value:
            if k not in allowed:
                raise ConfigError(f"{name}.{k}", f"unknown key (allowed: {', '.join(allowed)})")
        self.raw, self.name, self.allowed = value, name, allowed

    def key(self, k: str) -> str:
        """The dotted key ``section.k``."""
        return f"{self.name}.{k}"

    def has(self, k: str) -> bool:
        """Whether ``k`` was given."""
        return k in self.raw

    def get(self, k: str, default: Any = _REQUIRED, hint: str = "") -> Any:
        """The value of ``k``, or ``default``; required (with ``hint``) without a default."""
        if k in self.raw:
            return self.raw[k]
        if default is _REQUIRED:
            raise ConfigError(self.key(k), "required" + (f" ({hint})" if hint else ""))
        return default

    def only(self, keys: Sequence[str], why: str) -> None:
        """Reject the given keys not in ``keys`` (they are not used ``why``)."""
        for k in self.raw:
            if k not in keys:
                raise ConfigError(self.key(k), f"not used {why} (allowed: {', '.join(keys)})")
