"""``attnflow sweep``: one run per value of a parameter, and the table of the points.

A sweep configuration is a run configuration with a ``[sweep]`` table (``parameter``, a dotted
key, and its ``values``), read by :func:`sweep_table`. :func:`sweep_points` expands it into one
validated configuration per value, each with its own run directory (:func:`point_name`) under
the sweep's directory; :func:`write_summary_csv` writes ``summary.csv``, one row per point
(:func:`csv_row`): among others the final order parameter ``|int x rho|`` of both solvers and
the finite element free energy, the quantities of a phase-transition sweep over
``model.noise``.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from attnflow.app.config import Config, ConfigError, apply_override, parse_config, read_toml
from attnflow.io import write_text_atomic

__all__ = [
    "CSV_COLUMNS",
    "csv_row",
    "point_name",
    "sweep_points",
    "sweep_table",
    "write_summary_csv",
]


def point_name(i: int, parameter: str, value: Any) -> str:
    """The directory name of point ``i`` (``003_beta=4``): safe characters, at most 80."""
    leaf = parameter.rpartition(".")[2]
    v = format(value, "g") if isinstance(value, float) else str(value)
    return re.sub(r"[^A-Za-z0-9._=+-]", "_", f"{i:03d}_{leaf}={v}")[:80]


def sweep_table(
    config: str | Path,
    overrides: Sequence[tuple[str, Any]] = (),
    *,
    output: str | Path | None = None,
) -> tuple[dict[str, Any], Path]:
    """The raw table of a sweep file and the sweep's directory.

    ``overrides`` (``(dotted key, value)`` pairs) and ``output`` (the directory) are applied,
    a relative mesh path is made absolute (against the file's directory), the output directory
    is made absolute and the run name defaults to the file's stem. Raises
    :class:`~attnflow.app.config.ConfigError` without a ``[sweep]`` table or an output directory.
    """
    path = Path(config)
    raw = read_toml(path)
    for k, v in overrides:
        raw = apply_override(raw, k, v)
    if "sweep" not in raw:
        raise ConfigError(
            "sweep", 'required by attnflow sweep ([sweep] parameter = "model.beta", values = [..])'
        )
    if output is not None:
        raw = apply_override(raw, "output.directory", str(Path(output).absolute()))
    mesh = raw.get("mesh")
    if isinstance(mesh, dict) and isinstance(mesh.get("path"), str):
        p = Path(mesh["path"]).expanduser()
        mesh["path"] = str(p if p.is_absolute() else (path.resolve().parent / p).resolve())
    out = raw.get("output", {})
    directory = out.get("directory") if isinstance(out, dict) else None
    if directory is None:
        raise ConfigError("output.directory", "required (or pass --output DIR)")
    if not isinstance(directory, str):
        raise ConfigError("output.directory", f"must be a string, got {directory!r}")
    sweep_dir = Path(directory).expanduser().absolute()
    raw["output"]["directory"] = str(sweep_dir)
    run = raw.setdefault("run", {})
    if isinstance(run, dict):
        run.setdefault("name", path.stem)
    return raw, sweep_dir


def sweep_points(
    raw: dict, base: Config, sweep_dir: Path, *, ranks: int = 1
) -> list[tuple[Any, Config]]:
    """``(value, config)`` of every point of the sweep ``base`` (parsed from ``raw``): the
    parameter set to the value, no ``[sweep]``, output in ``sweep_dir / point_name(...)``, run
    name ``<name>/<point>``. Raises :class:`~attnflow.app.config.ConfigError` if one is invalid.
    """
    points = []
    for i, v in enumerate(base.sweep.values):
        name = point_name(i, base.sweep.parameter, v)
        point = apply_override(raw, base.sweep.parameter, v)
        point.pop("sweep")
        point["output"]["directory"] = str(sweep_dir / name)
        point.setdefault("run", {})["name"] = f"{base.run.name}/{name}"
        points.append((v, parse_config(point, ranks=ranks)))
    return points


#: The columns of ``summary.csv`` (``value`` is written under the parameter's name).
CSV_COLUMNS = (
    "point",
    "value",
    "status",
    "fem_mass_drift",
    "fem_log_energy_final",
    "fem_clusters_final",
    "particles_log_energy_final",
    "particles_clusters_final_mean",
    "w1_final_mean",
    "w1_final_sd",
    "fem_free_energy_final",
    "fem_order_parameter_final",
    "particles_order_parameter_final_mean",
    "seconds",
    "directory",
)


def csv_row(i: int, value: Any, summary: dict, directory: Path) -> dict[str, Any]:
    """The row of point ``i`` (value ``value``) of ``summary.csv`` from its run summary."""
    fem = summary.get("fem", {})
    par = summary.get("particles", {})
    cmp = summary.get("comparison", {})
    clusters = fem.get("clusters")
    return {
        "point": i,
        "value": value,
        "status": summary.get("status", "missing"),
        "fem_mass_drift": fem.get("mass_drift"),
        "fem_log_energy_final": fem.get("log_energy_final"),
        "fem_clusters_final": clusters[-1] if clusters else None,
        "particles_log_energy_final": par.get("log_energy_final"),
        "particles_clusters_final_mean": par.get("clusters_final_mean"),
        "w1_final_mean": cmp.get("w1_final_mean"),
        "w1_final_sd": cmp.get("w1_final_sd"),
        "fem_free_energy_final": fem.get("free_energy_final"),
        "fem_order_parameter_final": _scalar(fem.get("order_parameter_final")),
        "particles_order_parameter_final_mean": par.get("order_parameter_final_mean"),
        "seconds": summary.get("timings", {}).get("total"),
        "directory": directory.name,
    }


def _scalar(v: Any) -> Any:
    """A number for the table (a causal run's per-slice list: its last slice)."""
    return v[-1] if isinstance(v, list) and v else v


def write_summary_csv(path: str | Path, parameter: str, rows: list[dict]) -> None:
    """Write ``rows`` as ``summary.csv`` (atomically; the value column named ``parameter``)."""
    buf = io.StringIO()
    cols = [parameter if c == "value" else c for c in CSV_COLUMNS]
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(cols)
    for r in rows:
        w.writerow(["" if r[c] is None else r[c] for c in CSV_COLUMNS])
    write_text_atomic(path, buf.getvalue())
