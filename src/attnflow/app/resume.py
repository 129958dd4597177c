"""What a resume may reuse: the same problem, the result files and checkpoints attnflow wrote.

A run directory's manifest (:mod:`attnflow.app.manifest`) stores the *problem* of the run —
the resolved configuration without ``[output]``, ``[checkpoint]`` and ``run.name``
(:func:`problem_of`) — and its SHA-256, and the size and hash of every file written.
:func:`check_resume` verifies, before anything is written, that the configuration a resume
reads (``RUN_DIR/config.toml``) is that problem, that the result files it would reuse
(``fem_solution.npz``, ``particles.npz``) are the ones attnflow wrote, and that every phase it
continues has a valid checkpoint written for that problem: a truncated or changed newest
checkpoint is skipped for the previous one (:func:`attnflow.app.checkpoint.select_checkpoint`;
the runner names it in a warning), none valid is refused. Every refusal is a
:class:`~attnflow.app.config.ConfigError` naming the key or the file.
"""

from __future__ import annotations

import hashlib
import json
import tomllib
from pathlib import Path
from typing import Any

from attnflow.app.checkpoint import read_checkpoint, select_checkpoint
from attnflow.app.config import Config, ConfigError
from attnflow.app.config.values import show
from attnflow.app.manifest import MANIFEST_NAME, Manifest, ManifestError
from attnflow.states import CheckpointError

__all__ = [
    "RESULT_FILES",
    "check_resume",
    "differing_keys",
    "problem_of",
    "problem_sha256",
    "record_problem",
]

#: The result file of each phase.
RESULT_FILES = {"fem": "fem_solution.npz", "particles": "particles.npz"}
_FREE = ("output", "checkpoint")


def problem_of(tables: Config | dict[str, Any]) -> dict[str, Any]:
    """The problem of a configuration (or of its tables): everything but ``[output]``,
    ``[checkpoint]`` and ``run.name``, the keys a resume may not change."""
    d = tables.to_dict() if isinstance(tables, Config) else json.loads(json.dumps(tables))
    for k in _FREE:
        d.pop(k, None)
    if isinstance(d.get("run"), dict):
        d["run"].pop("name", None)
    return d


def problem_sha256(problem: dict[str, Any]) -> str:
    """The SHA-256 of a problem (canonical JSON)."""
    text = json.dumps(problem, sort_keys=True, separators=(",", ":"), allow_nan=True)
    return hashlib.sha256(text.encode()).hexdigest()


def differing_keys(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """The dotted keys (``section.key``, or the section) where two sets of tables differ."""
    out = []
    for s in sorted(set(old) | set(new)):
        a, b = old.get(s), new.get(s)
        if not (isinstance(a, dict) and isinstance(b, dict)):
            if a != b:
                out.append(s)
            continue
        out += [f"{s}.{k}" for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
    return out


def record_problem(manifest: Manifest, cfg: Config) -> None:
    """Store the problem of ``cfg`` in a new run directory's manifest (kept when present)."""
    if "problem" not in manifest.data:
        p = problem_of(cfg)
        manifest.data["problem"] = p
        manifest.data["problem_sha256"] = problem_sha256(p)
        manifest.save()


def _lookup(tables: dict[str, Any], dotted: str) -> Any:
    section, _, key = dotted.partition(".")
    t = tables.get(section)
    if not key:
        return "a table" if isinstance(t, dict) else "absent" if t is None else t
    return t.get(key, "absent") if isinstance(t, dict) else "absent"


def _checkpoint_problem(path: Path, problem: dict[str, Any]) -> str | None:
    try:
        _, text = read_checkpoint(path)
        old = problem_of(tomllib.loads(text))
    except (CheckpointError, tomllib.TOMLDecodeError) as e:
        return str(e)
    diff = differing_keys(old, problem)
    return None if not diff else f"written for another configuration (differs in {diff[0]})"


def _loads(path: Path) -> str | None:
    """``None`` if ``path`` is a readable solution file (a causal run's finite element result is
    a kinetic solution), else why not."""
    from attnflow.app.runner import load_result

    try:
        load_result(path)
    except Exception as e:  # a damaged archive fails in many ways (zip, zlib, keys, values)
        return f"{path.name} cannot be read ({type(e).__name__})"
    return None


def check_resume(run_dir: str | Path, cfg: Config) -> dict[str, Path | None]:
    """Verify what resuming ``run_dir`` with ``cfg`` would reuse (see the module docstring).

    Returns the checkpoint each continued phase starts from (``None``: from the beginning);
    raises :class:`ConfigError` naming the key or file on any mismatch.
    """
    run_dir = Path(run_dir)
    try:
        manifest = Manifest.load(run_dir)
    except ManifestError as e:
        raise ConfigError("--resume", str(e)) from None
    if manifest is None or "problem" not in manifest.data:
        raise ConfigError(
            "--resume",
            f"{run_dir} has no {MANIFEST_NAME} with the run's configuration (made by an older "
            "attnflow?): what it would reuse cannot be verified; start a new run",
        )
    old, new = manifest.data["problem"], problem_of(cfg)
    if manifest.data.get("problem_sha256") != problem_sha256(old):
        raise ConfigError("--resume", f"{manifest.path}: the stored configuration was changed")
    diff = differing_keys(old, new)
    if diff:
        k = diff[0]
        raise ConfigError(
            k,
            f"is {show(_lookup(new, k))} in {run_dir / 'config.toml'} but the run was started "
            f"with {show(_lookup(old, k))}: a resume continues the same problem (only "
            "checkpoint.* and output.* may change; start a new run for another value)",
        )
    starts: dict[str, Path | None] = {}
    for phase in cfg.run.solvers:
        result = run_dir / RESULT_FILES[phase]
        if result.exists() or result.is_symlink():
            reason = manifest.verify(result, pending_ok=True) or _loads(result)
            if reason is not None:
                raise ConfigError("--resume", f"{run_dir}: {reason}: will not reuse it")
            continue

        def verify(path: Path) -> str | None:
            return manifest.verify(path, pending_ok=True) or _checkpoint_problem(path, new)

        path, bad = select_checkpoint(run_dir / "checkpoints", phase, verify)
        if path is None and bad:
            names = ", ".join(f"{p.name} ({why})" for p, why in bad)
            raise ConfigError("--resume", f"no valid {phase} checkpoint in {run_dir}: {names}")
        starts[phase] = path
    return starts
