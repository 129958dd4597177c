"""The manifest of a run or sweep directory: the files attnflow wrote there, with their hashes.

attnflow only ever deletes what it wrote. Every run and sweep directory holds
``.attnflow-manifest.json``, written atomically and updated as files are added: for every file
its path relative to the directory, its size and its SHA-256, and the directories attnflow
created. ``--overwrite`` (:meth:`Manifest.foreign`, :meth:`Manifest.remove_owned`) removes
exactly those files, and refuses when anything else is there: a file the manifest does not
list, a file whose content changed since attnflow wrote it (the user edited it: it is the
user's now), a symbolic link, a directory attnflow did not create. A resume uses the hashes to
verify the result files and checkpoints it reuses (:meth:`Manifest.verify`), and the
``problem`` stored here (the resolved configuration without ``[output]``, ``[checkpoint]`` and
``run.name``) to verify the configuration it continues.

Entries are of three kinds:

* written: ``{"size": n, "sha256": h}`` — a complete file;
* pending: ``{"pending": true}`` — attnflow is writing it (through ``name.tmp``, renamed
  over ``name``); recorded before writing, so a run killed in between leaves nothing unknown;
  a directory may be pending too (the finite element solver writes ``fem/`` itself): while
  pending, everything under it is attnflow's;
* a log: ``{"size": n, "sha256": h, "append": true}`` — ``run.log``, which attnflow appends
  to: its first ``n`` bytes must hash to ``h``.

A directory listed as created by attnflow that holds a manifest of its own (the points of a
sweep) is checked and removed through that manifest. Only rank 0 keeps a manifest.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path, PurePosixPath
from typing import Any

from attnflow.io import write_text_atomic

__all__ = ["MANIFEST_NAME", "Manifest", "ManifestError", "file_sha256"]

#: The file name of the manifest in a run or sweep directory.
MANIFEST_NAME = ".attnflow-manifest.json"
_FORMAT = 1
_CHUNK = 1 << 20


class ManifestError(ValueError):
    """A manifest that cannot be read (one line)."""


def file_sha256(path: str | Path, size: int | None = None) -> str:
    """The SHA-256 (hex) of a file, or of its first ``size`` bytes."""
    h = hashlib.sha256()
    left = size
    with open(path, "rb") as f:
        while left is None or left > 0:
            block = f.read(_CHUNK if left is None else min(_CHUNK, left))
            if not block:
                break
            h.update(block)
            if left is not None:
                left -= len(block)
    return h.hexdigest()


def _rel(root: Path, path: str | Path) -> str:
    """``path`` (absolute, or relative to ``root``) relative to ``root``, POSIX style."""
    p = Path(path)
    rel = p.relative_to(root) if p.is_absolute() else p
    return PurePosixPath(*rel.parts).as_posix()


class Manifest:
    """The manifest of ``directory`` (see the module docstring); ``save`` writes it.

    Parameters
    ----------
    directory : the run or sweep directory.
    kind : ``"run"`` or ``"sweep"``.
    data : the parsed manifest (``None``: a new, empty one).
    """

    def __init__(self, directory: str | Path, kind: str = "run", data: dict | None = None):
        self.directory = Path(directory).absolute()
        self.data: dict[str, Any] = data or {"format": _FORMAT, "kind": kind}
        self.data.setdefault("files", {})
        self.data.setdefault("dirs", {})

    # -- reading -------------------------------------------------------------------------------
    @property
    def path(self) -> Path:
        """The manifest file."""
        return self.directory / MANIFEST_NAME

    @property
    def files(self) -> dict[str, dict[str, Any]]:
        """``relative path -> entry`` of the files."""
        return self.data["files"]

    @property
    def dirs(self) -> dict[str, dict[str, Any]]:
        """``relative path -> {"pending": bool}`` of the directories attnflow created."""
        return self.data["dirs"]

    @classmethod
    def load(cls, directory: str | Path) -> Manifest | None:
        """The manifest of ``directory`` (``None`` if there is none); :class:`ManifestError`
        if it is unreadable."""
        path = Path(directory) / MANIFEST_NAME
        if path.is_symlink() or not path.is_file():
            return None
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise ManifestError(f"{path}: unreadable manifest ({e})") from None
        ok = (
            isinstance(data, dict)
            and data.get("format") == _FORMAT
            and isinstance(data.get("files"), dict)
            and isinstance(data.get("dirs"), dict)
            and all(isinstance(v, dict) for v in data["files"].values())
            and all(isinstance(v, dict) for v in data["dirs"].values())
        )
        if not ok:
            raise ManifestError(f"{path}: not an attnflow manifest of format {_FORMAT}")
        return cls(directory, data.get("kind", "run"), data)

    @classmethod
    def open(cls, directory: str | Path, kind: str = "run") -> Manifest:
        """The manifest of ``directory``, or a new one (not written until :meth:`save`)."""
        return cls.load(directory) or cls(directory, kind)

    # -- recording -----------------------------------------------------------------------------
    def save(self) -> None:
        """Write the manifest (atomically)."""
        self.directory.mkdir(parents=True, exist_ok=True)
        write_text_atomic(self.path, json.dumps(self.data, indent=1, sort_keys=True) + "\n")

    def _parents(self, rel: str) -> None:
        for parent in PurePosixPath(rel).parents:
            if str(parent) != ".":
                self.dirs.setdefault(parent.as_posix(), {"pending": False})

    def pending(self, *paths: str | Path, tree: bool = False) -> None:
        """Record that attnflow is about to write ``paths`` (files; directories with ``tree``)
        and save."""
        for p in paths:
            rel = _rel(self.directory, p)
            self._parents(rel)
            if tree:
                self.dirs[rel] = {"pending": True}
            else:
                self.files[rel] = {"pending": True}
        self.save()

    def record(self, *paths: str | Path, append: bool = False) -> None:
        """Record the written files ``paths`` (a directory: every file under it, recursively)
        with size and hash, and save. ``append``: a log attnflow appends to."""
        for p in paths:
            rel = _rel(self.directory, p)
            full = self.directory / rel
            self._parents(rel)
            if full.is_dir() and not full.is_symlink():
                self.dirs[rel] = {"pending": False}
                for sub in sorted(full.rglob("*")):
                    if sub.is_symlink():
                        continue
                    r = _rel(self.directory, sub)
                    if sub.is_dir():
                        self.dirs[r] = {"pending": False}
                    else:
                        self.files[r] = self._entry(sub)
            elif full.is_file():
                self.files[rel] = self._entry(full, append)
        self.save()

    def record_dir(self, *paths: str | Path) -> None:
        """Record directories attnflow created (their contents are recorded separately)."""
        for p in paths:
            rel = _rel(self.directory, p)
            self._parents(rel)
            self.dirs.setdefault(rel, {"pending": False})
        self.save()

    def forget(self, *paths: str | Path) -> None:
        """Drop ``paths`` (files attnflow removed) and save."""
        for p in paths:
            self.files.pop(_rel(self.directory, p), None)
        self.save()

    @staticmethod
    def _entry(path: Path, append: bool = False) -> dict[str, Any]:
        size = path.stat().st_size
        out: dict[str, Any] = {"size": size, "sha256": file_sha256(path)}
        if append:
            out["append"] = True
        return out

    # -- checking ------------------------------------------------------------------------------
    def verify(self, path: str | Path, *, pending_ok: bool = False) -> str | None:
        """``None`` if the file ``path`` is as attnflow wrote it, else the reason (one line).

        ``pending_ok``: a file recorded as pending counts as attnflow's (a file written
        atomically, by a rename, is complete once it exists: a run killed after the rename
        and before recording its hash)."""
        rel = _rel(self.directory, path)
        full = self.directory / rel
        entry = self.files.get(rel)
        if full.is_symlink():
            return f"{rel} is a symbolic link (attnflow writes none)"
        if entry is None:
            return f"{rel} was not written by attnflow (not in {MANIFEST_NAME})"
        if entry.get("pending") and pending_ok and full.is_file():
            return None
        if entry.get("pending"):
            return f"{rel} was being written when the run stopped (not recorded complete)"
        if not full.is_file():
            return f"{rel} is missing"
        size = full.stat().st_size
        want = int(entry.get("size", -1))
        if entry.get("append"):
            if size < want or file_sha256(full, want) != entry.get("sha256"):
                return f"{rel} changed since attnflow wrote it"
            return None
        if size < want:
            return f"{rel} is truncated ({size} of {want} bytes)"
        if size != want or file_sha256(full) != entry.get("sha256"):
            return f"{rel} changed since attnflow wrote it"
        return None

    def foreign(self) -> list[str]:
        """What in the directory attnflow did not write, or that changed since: one reason per
        path (empty: everything there is attnflow's)."""
        out: list[str] = []
        self._walk(self.directory, out)
        return out

    def _walk(self, d: Path, out: list[str]) -> None:
        try:
            entries = sorted(os.scandir(d), key=lambda e: e.name)
        except OSError as e:
            out.append(f"{_rel(self.directory, d)}/ cannot be listed ({e.strerror})")
            return
        for e in entries:
            full = Path(e.path)
            rel = _rel(self.directory, full)
            if e.is_symlink():
                out.append(f"{rel} is a symbolic link")
            elif e.is_dir():
                info = self.dirs.get(rel)
                if info is None:
                    out.append(f"{rel}/ was not created by attnflow")
                elif info.get("pending"):
                    continue  # written by a solver that was stopped: all attnflow's
                elif (full / MANIFEST_NAME).is_file():
                    try:
                        sub = Manifest.load(full)
                    except ManifestError as err:
                        out.append(str(err))
                        continue
                    assert sub is not None
                    out += [f"{rel}/{x}" for x in sub.foreign()]
                else:
                    self._walk(full, out)
            elif rel == MANIFEST_NAME or self._is_tmp(rel):
                continue
            elif rel not in self.files:
                out.append(f"{rel} was not written by attnflow")
            elif not self.files[rel].get("pending"):
                reason = self.verify(rel)
                if reason is not None:
                    out.append(reason)

    def _is_tmp(self, rel: str) -> bool:
        """``name.tmp`` of a file attnflow writes atomically (left by a killed writer)."""
        return rel.endswith(".tmp") and rel[: -len(".tmp")] in self.files

    def remove_owned(self) -> None:
        """Remove the files attnflow wrote, then the directories it created that are empty,
        then the manifest. Call only when :meth:`foreign` is empty."""
        root = self.directory
        for rel in sorted(self.dirs, key=lambda r: -r.count("/")):
            full = root / rel
            if full.is_symlink() or not full.is_dir():
                continue
            if self.dirs[rel].get("pending"):
                shutil.rmtree(full)
            elif (full / MANIFEST_NAME).is_file():
                sub = Manifest.load(full)
                if sub is not None:
                    sub.remove_owned()
        for rel in self.files:
            for name in (rel, rel + ".tmp"):
                p = root / name
                if p.is_file() and not p.is_symlink():
                    p.unlink()
        for rel in sorted(self.dirs, key=lambda r: -r.count("/")):
            full = root / rel
            if full.is_dir() and not full.is_symlink() and not any(full.iterdir()):
                full.rmdir()
        self.path.unlink(missing_ok=True)
        self.data["files"], self.data["dirs"] = {}, {}
