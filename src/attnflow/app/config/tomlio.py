"""TOML files of the configurations: :func:`read_toml` (one-line errors), :func:`dumps_toml`.

The standard library reads TOML (``tomllib``) but does not write it; :func:`dumps_toml` writes
the small subset the resolved configurations and sweep files need, with floats written by
``repr`` so that they read back bitwise.
"""

from __future__ import annotations

import math
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from attnflow.app.config.values import ConfigError

__all__ = ["dumps_toml", "read_toml"]


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    if isinstance(v, (float, np.floating)):
        x = float(v)
        if math.isnan(x):
            return "nan"
        if math.isinf(x):
            return "inf" if x > 0 else "-inf"
        return repr(x)
    if isinstance(v, str):
        out = []
        for ch in v:
            if ch in '"\\':
                out.append("\\" + ch)
            elif ch == "\n":
                out.append("\\n")
            elif ch == "\t":
                out.append("\\t")
            elif ord(ch) < 0x20 or ord(ch) == 0x7F:
                out.append(f"\\u{ord(ch):04x}")
            else:
                out.append(ch)
        return '"' + "".join(out) + '"'
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    raise TypeError(f"cannot write {type(v).__name__} as TOML")


def _toml_key(k: str) -> str:
    ok = k and all(c.isalnum() or c in "_-" for c in k)
    return k if ok else _toml_value(k)


def dumps_toml(tables: Mapping[str, Any], header: str = "") -> str:
    """Write a mapping of tables (and top-level scalars) as TOML.

    Values: bools, ints, floats (``repr``, so they read back bitwise; ``inf``/``nan``),
    strings, and (nested) lists of these; one level of tables, plus nested tables as dotted
    headers, and arrays of tables (a non-empty list of mappings of values: ``[[name]]``).
    Enough for configurations; not a general TOML writer.
    """
    lines = [f"# {line}" for line in header.splitlines()] if header else []

    def is_array(v: Any) -> bool:
        return isinstance(v, (list, tuple)) and bool(v) and all(isinstance(x, Mapping) for x in v)

    def header(text: str) -> None:
        if lines:
            lines.append("")
        lines.append(text)

    def emit(prefix: str, table: Mapping[str, Any]) -> None:
        scalars = {k: v for k, v in table.items() if not isinstance(v, Mapping) and not is_array(v)}
        subs = {k: v for k, v in table.items() if k not in scalars}
        if prefix and (scalars or not subs):
            header(f"[{prefix}]")
        for k, v in scalars.items():
            lines.append(f"{_toml_key(k)} = {_toml_value(v)}")
        for k, v in subs.items():
            name = f"{prefix}.{_toml_key(k)}" if prefix else _toml_key(k)
            if isinstance(v, Mapping):
                emit(name, v)
                continue
            for item in v:  # an array of tables, [[name]]
                header(f"[[{name}]]")
                for kk, vv in item.items():
                    if isinstance(vv, Mapping) or is_array(vv):
                        raise TypeError(f"cannot write a table inside [[{name}]]")
                    lines.append(f"{_toml_key(kk)} = {_toml_value(vv)}")

    emit("", tables)
    return "\n".join(lines) + "\n"


def read_toml(path: str | Path) -> dict[str, Any]:
    """Parse a TOML file; :class:`ConfigError` (one line) if missing or not valid TOML."""
    p = Path(path)
    try:
        text = p.read_text()
    except FileNotFoundError:
        raise ConfigError("", f"no such configuration file: {p}") from None
    except OSError as e:
        raise ConfigError("", f"cannot read {p}: {e.strerror}") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError("", f"{p.name}: invalid TOML: {e}") from None
