"""Pages the attnflow site writes at build time: the demo gallery and the API reference.

Gallery: every ``demos/demo_*.py`` (a jupytext *light* script) is run as a subprocess with
``--small --output <build>/gallery/<name>`` (two at a time, one thread each, no display); its
Markdown comments, code and the PNG figures it wrote become ``docs/demos/<name>.md``, and
``docs/demos/index.md`` lists them all with a thumbnail. A demo that fails stops the build (a
warning, an error under ``-W``). Outputs are reused while the demo and ``src/attnflow`` are
unchanged (a hash of both is kept beside the outputs), so a second ``make docs`` is quick.

API: one page per public namespace of the library (``docs/api/<name>.md``): a package page
documents the names of its ``__all__`` defined inside it, a module page its own members, and
the ``attnflow`` page a table of the top-level names linking to where they are documented.

Environment: ``ATTNFLOW_GALLERY_JOBS`` (demos run at once, default 2),
``ATTNFLOW_GALLERY_TIMEOUT`` (seconds per demo, default 900), ``ATTNFLOW_GALLERY_REUSE=1``
(reuse the outputs of an earlier successful run even if the sources changed since: for
editing the pages; never in CI).
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import importlib
import inspect
import os
import pkgutil
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from sphinx.application import Sphinx
from sphinx.transforms.post_transforms import SphinxPostTransform
from sphinx.util import logging

logger = logging.getLogger(__name__)

DOCS = Path(__file__).resolve().parents[1]
ROOT = DOCS.parent
DEMO_DIR = ROOT / "demos"
SRC = ROOT / "src" / "attnflow"
GALLERY_SRC = DOCS / "demos"  # generated (gitignored)
API_SRC = DOCS / "api"  # generated (gitignored)
FIGURE_SUFFIXES = (".png", ".svg", ".jpg", ".gif")
DOWNLOAD_SUFFIXES = (".pdf", ".svg", ".gif", ".xdmf", ".pvd", ".bp", ".vtu", ".vtp", ".csv")


# -- helpers ------------------------------------------------------------------------------------
def _write_if_changed(path: Path, text: str) -> None:
    """Write ``text`` unless the file already holds it (Sphinx then keeps its cached page)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists() or path.read_text() != text:
        path.write_text(text)


def _fence(text: str, lang: str = "") -> str:
    """A Markdown code fence long enough for any backticks in ``text``."""
    longest = max((len(m) for m in re.findall(r"`+", text)), default=0)
    ticks = "`" * max(3, longest + 1)
    return f"{ticks}{lang}\n{text.rstrip()}\n{ticks}\n"


def _source_hash(demo: Path) -> str:
    """Hash of the demo, every file of src/attnflow and the interpreter: outputs reusable?"""
    h = hashlib.sha256()
    h.update(sys.version.encode())
    h.update(demo.read_bytes())
    for p in sorted(SRC.rglob("*")):
        if p.is_file() and "__pycache__" not in p.parts:
            h.update(str(p.relative_to(SRC)).encode())
            h.update(p.read_bytes())
    return h.hexdigest()


# -- gallery ------------------------------------------------------------------------------------
@dataclass
class DemoRun:
    """One demo executed for the gallery."""

    name: str
    script: Path
    out: Path
    seconds: float = 0.0
    returncode: int = 0
    log: str = ""
    reused: bool = False
    files: list[Path] = field(default_factory=list)


def _run_demo(script: Path, out: Path, timeout: float, threads: int) -> DemoRun:
    run = DemoRun(script.stem, script, out)
    stamp = out / ".attnflow-docs-stamp"
    key = _source_hash(script)
    reuse = os.environ.get("ATTNFLOW_GALLERY_REUSE") == "1"  # stale outputs are fine
    if stamp.exists() and (reuse or stamp.read_text().splitlines()[0] == key):
        lines = stamp.read_text().splitlines()
        run.seconds, run.reused = float(lines[1]), True
        run.log = (
            (out / ".attnflow-docs-log").read_text()
            if (out / ".attnflow-docs-log").exists()
            else ""
        )
    else:
        if out.exists():
            shutil.rmtree(out)
        out.mkdir(parents=True)
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("PMI_", "PMIX_", "HYDRA_", "MPIR_", "OMPI_"))
        }
        env.update(MPLBACKEND="Agg", PYTHONUNBUFFERED="1")
        if threads:
            env.update(OMP_NUM_THREADS=str(threads), NUMBA_NUM_THREADS=str(threads))
        t0 = time.perf_counter()
        try:
            proc = subprocess.run(
                [sys.executable, str(script), "--small", "--output", str(out)],
                cwd=out,
                env=env,
                capture_output=True,
                text=True,
                timeout=timeout,
            )
            run.returncode, run.log = proc.returncode, proc.stdout + proc.stderr
        except subprocess.TimeoutExpired as err:
            run.returncode = -1
            run.log = f"timed out after {timeout:.0f} s\n{err.stdout or ''}{err.stderr or ''}"
        run.seconds = time.perf_counter() - t0
        (out / ".attnflow-docs-log").write_text(run.log)
        if run.returncode == 0:
            stamp.write_text(f"{key}\n{run.seconds:.3f}\n")
    run.files = sorted(p for p in out.rglob("*") if p.is_file() and not p.name.startswith("."))
    return run


def _title_and_summary(cells: list) -> tuple[str, str]:
    """The first Markdown heading of the demo and the paragraph after it."""
    for cell in cells:
        if cell.cell_type != "markdown":
            continue
        lines = cell.source.strip().splitlines()
        if lines and lines[0].startswith("# "):
            title = lines[0][2:].strip()
            para: list[str] = []
            for line in lines[1:]:
                if not line.strip():
                    if para:
                        break
                    continue
                if line.startswith(("$$", "#")):
                    break
                para.append(line.strip())
            return title, " ".join(para)
    return "", ""


def _demo_page(run: DemoRun, figures_dir: Path) -> tuple[str, str, str, str | None]:
    """The Markdown of one gallery page; returns (page, title, summary, thumbnail)."""
    import jupytext  # a build dependency of the docs only

    nb = jupytext.reads(run.script.read_text(), fmt="py:light")
    title, summary = _title_and_summary(nb.cells)
    title = title or run.name
    # Figures of the run, copied beside the page; each after the first code cell that names it.
    if figures_dir.exists():
        shutil.rmtree(figures_dir)
    figures_dir.mkdir(parents=True)
    figures: list[tuple[Path, str]] = []  # (copy beside the page, file name the demo wrote)
    downloads: list[Path] = []
    for f in run.files:
        rel = f.relative_to(run.out)
        if len(rel.parts) > 2 or f.suffix not in (*FIGURE_SUFFIXES, ".pdf"):
            continue
        dest = figures_dir / "_".join(rel.parts)
        shutil.copy2(f, dest)
        if f.suffix in (".png", ".jpg", ".gif"):
            figures.append((dest, rel.name))
        else:
            downloads.append(dest)
    # File names in the code (f-strings become patterns): place each figure after its cell.
    patterns: list[tuple[int, re.Pattern]] = []
    for i, cell in enumerate(nb.cells):
        if cell.cell_type == "code":
            for lit in re.findall(r"[\"']([^\"'\n]+\.(?:png|jpg|gif))[\"']", cell.source):
                parts_ = re.split(r"\{[^}]*\}", lit)
                patterns.append((i, re.compile(".*".join(map(re.escape, parts_)) + "$")))
    placed: dict[int, list[Path]] = {}
    unplaced: list[Path] = []
    for dest, written in figures:
        cell = next((i for i, pat in patterns if pat.search(written)), None)
        if cell is None:
            unplaced.append(dest)
        else:
            placed.setdefault(cell, []).append(dest)

    def figure_md(fig: Path) -> str:
        rel = f"{figures_dir.name}/{fig.name}"
        return f"```{{figure}} {rel}\n:alt: {fig.stem}\n:width: 100%\n\n`{fig.name}`\n```\n"

    parts: list[str] = [f"({run.name})=\n"]
    seen_title = False
    for i, cell in enumerate(nb.cells):
        if cell.cell_type == "markdown":
            src = cell.source.strip()
            if not seen_title and src.startswith("# "):
                seen_title = True
                head, _, rest = src.partition("\n")
                parts.append(head + "\n")
                parts.append(
                    f"`demos/{run.script.name}` · executed for this page with `--small` "
                    f"in {run.seconds:.0f} s. Full size: "
                    f"`python demos/{run.script.name} --output out/{run.name}` "
                    "(also under `mpiexec -n 2`).\n"
                )
                if rest.strip():
                    parts.append(rest.strip() + "\n")
            else:
                parts.append(src + "\n")
        elif cell.cell_type == "code" and cell.source.strip():
            parts.append(_fence(cell.source, "python"))
        for fig in placed.get(i, []):
            parts.append(figure_md(fig))
    if unplaced:
        parts.append("## Figures\n")
        parts.extend(figure_md(fig) for fig in unplaced)
    if downloads:
        parts.append("## Vector figures\n")
        parts.extend(f"* {{download}}`{d.name} <{figures_dir.name}/{d.name}>`\n" for d in downloads)
    written = [str(f.relative_to(run.out)) for f in run.files]
    para = [w for w in written if Path(w).suffix in DOWNLOAD_SUFFIXES or w.endswith(".h5")]
    parts.append("## Files written by the run\n")
    parts.append(
        f"{len(written)} files under `--output`"
        + (
            "; for ParaView and other tools: " + ", ".join(f"`{w}`" for w in para[:24])
            if para
            else ""
        )
        + ("…" if len(para) > 24 else "")
        + ".\n"
    )
    tail = "\n".join(run.log.strip().splitlines()[-30:])
    if tail:
        parts.append("## Log (last lines, `--small`)\n")
        parts.append(_fence(tail, "text"))
    # The thumbnail, relative to the gallery index (docs/demos/index.md): the first figure.
    thumb = f"{figures_dir.name}/{figures[0][0].name}" if figures else None
    return "\n".join(parts), title, summary, thumb


def build_gallery(app: Sphinx) -> None:
    """Run every demo with ``--small`` and write the gallery pages."""
    demos = sorted(DEMO_DIR.glob("demo_*.py"))
    out_root = Path(app.outdir).parent / "gallery"
    jobs = int(os.environ.get("ATTNFLOW_GALLERY_JOBS", str(min(2, os.cpu_count() or 1))))
    timeout = float(os.environ.get("ATTNFLOW_GALLERY_TIMEOUT", "900"))
    threads = 1 if jobs > 1 else 0
    logger.info(f"[gallery] running {len(demos)} demos with --small ({jobs} at a time)")
    t0 = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        runs = list(pool.map(lambda s: _run_demo(s, out_root / s.stem, timeout, threads), demos))
    wall = time.perf_counter() - t0
    GALLERY_SRC.mkdir(exist_ok=True)
    # Remove pages of demos that no longer exist.
    names = {r.name for r in runs}
    for p in GALLERY_SRC.iterdir():
        if p.name != "index.md" and p.name.removesuffix(".md") not in names:
            shutil.rmtree(p) if p.is_dir() else p.unlink()
    entries = []
    for run in runs:
        state = "reused" if run.reused else f"{run.seconds:.1f} s"
        logger.info(f"[gallery] {run.name}: {state}, {len(run.files)} files")
        if run.returncode != 0:
            logger.warning(
                f"[gallery] {run.script.name} --small failed (status {run.returncode}):\n"
                + "\n".join(run.log.strip().splitlines()[-40:]),
                type="attnflow",
                subtype="gallery",
            )
        page, title, summary, thumb = _demo_page(run, GALLERY_SRC / run.name)
        _write_if_changed(GALLERY_SRC / f"{run.name}.md", page)
        entries.append((run, title, summary, thumb))
    logger.info(f"[gallery] demos done in {wall:.1f} s (wall)")
    index = [
        "# Gallery\n",
        "One page per demo of `demos/`: the script's mathematics, its code and the figures it "
        "wrote when this site was built (every demo is executed at its `--small` size during "
        "the build; the full sizes are the scripts' defaults). Each demo also runs in "
        "`make test`, serially and under `mpiexec -n 2`.\n",
        "```{toctree}\n:hidden:\n\n" + "\n".join(r.name for r, *_ in entries) + "\n```\n",
    ]
    for run, title, summary, thumb in entries:
        index.append(f"## [{title}]({run.name}.md)\n")
        if thumb:
            index.append(f"```{{image}} {thumb}\n:alt: {title}\n:width: 420px\n```\n")
        index.append(
            (summary + "\n\n" if summary else "")
            + f"`demos/{run.script.name}` · `--small` in {run.seconds:.0f} s\n"
        )
    _write_if_changed(GALLERY_SRC / "index.md", "\n".join(index))


# -- API reference ------------------------------------------------------------------------------
#: Library namespaces documented as one page each, in this order (then any new ones).
API_ORDER = [
    "attnflow",
    "attnflow.model",
    "attnflow.dynamics",
    "attnflow.perceptron",
    "attnflow.diffusion",
    "attnflow.cloud",
    "attnflow.laws",
    "attnflow.geometry",
    "attnflow.particles",
    "attnflow.fem",
    "attnflow.kernels",
    "attnflow.causal",
    "attnflow.layers",
    "attnflow.studies",
    "attnflow.metrics",
    "attnflow.compare",
    "attnflow.solutions",
    "attnflow.states",
    "attnflow.timegrid",
    "attnflow.meshdata",
    "attnflow.io",
    "attnflow.resources",
    "attnflow.validation",
]
#: Not in the API reference: the application (see the command line page) and ``__main__``.
API_EXCLUDE = {"attnflow.app", "attnflow.__main__"}


def _namespaces() -> list[str]:
    import attnflow

    found = ["attnflow"]
    for info in pkgutil.iter_modules(attnflow.__path__, "attnflow."):
        short = info.name.rsplit(".", 1)[-1]
        if short.startswith("_") or info.name in API_EXCLUDE:
            continue
        found.append(info.name)
    ordered = [n for n in API_ORDER if n in found]
    return ordered + sorted(n for n in found if n not in ordered)


def _kind(obj: object) -> str:
    if inspect.isclass(obj):
        return "autoclass"
    if callable(obj):
        return "autofunction"
    return "autodata"


def _first_line(obj: object) -> str:
    doc = inspect.getdoc(obj) or ""
    line = doc.strip().split("\n\n")[0].replace("\n", " ").strip()
    py = {"func", "class", "meth", "mod", "obj", "attr", "data", "exc", "const"}
    line = re.sub(  # reST roles as MyST roles
        r":(?:py:)?(\w+):`([^`]+)`",
        lambda m: f"{{{'py:' if m.group(1) in py else ''}{m.group(1)}}}`{m.group(2)}`",
        line,
    )
    return line.replace("|", "\\|")


def _submodule_sections(pkg: object, where: dict[int, str]) -> list[str]:
    """Sections for the public names of a package's submodules that the package does not
    re-export (e.g. ``attnflow.studies.metastability.most_unstable_mode``)."""
    exported = {id(getattr(pkg, n)) for n in getattr(pkg, "__all__", [])}
    lines: list[str] = []
    for info in pkgutil.iter_modules(pkg.__path__, pkg.__name__ + "."):
        if info.name.rsplit(".", 1)[-1].startswith("_"):
            continue
        sub = importlib.import_module(info.name)
        extra = [
            n
            for n in getattr(sub, "__all__", [])
            if id(getattr(sub, n)) not in exported
            and getattr(getattr(sub, n), "__module__", info.name) == info.name
            and not inspect.ismodule(getattr(sub, n))
        ]
        if not extra:
            continue
        lines += [f"## `{info.name}`\n", "```{eval-rst}", f".. currentmodule:: {info.name}", ""]
        for name in extra:
            obj = getattr(sub, name)
            where.setdefault(id(obj), f"{info.name}.{name}")
            opts = ["   :members:"] if inspect.isclass(obj) else []
            if not inspect.isclass(obj) and not callable(obj):
                opts = ["   :no-value:"]
            lines += [f".. {_kind(obj)}:: {name}", *opts, ""]
        lines.append("```\n")
    return lines


def build_api(app: Sphinx) -> None:
    """Write docs/api/*.md: one page per public namespace."""
    pages: list[str] = []
    where: dict[int, str] = {}  # id(object) -> documented full name
    names = _namespaces()
    bodies: dict[str, str] = {}
    for modname in names:
        if modname == "attnflow":
            continue
        mod = importlib.import_module(modname)
        public = list(getattr(mod, "__all__", []))
        is_pkg = hasattr(mod, "__path__")
        own, elsewhere = [], []
        for name in public:
            obj = getattr(mod, name)
            origin = getattr(obj, "__module__", None) or modname
            if inspect.ismodule(obj):
                continue
            inside = origin == modname or (is_pkg and origin.startswith(modname + "."))
            if not (inspect.isclass(obj) or inspect.isfunction(obj) or callable(obj)):
                inside = True  # data: documented where listed
            (own if inside else elsewhere).append(name)
        summary = [
            f"| {{py:obj}}`{n} <{modname}.{n}>` | {_first_line(getattr(mod, n))} |" for n in own
        ]
        lines = [
            f"# `{modname}`\n",
            *(["| name | summary |", "|---|---|", *summary, ""] if summary else []),
            "```{eval-rst}",
            f".. automodule:: {modname}",
            "   :no-members:",
            "",
            f".. currentmodule:: {modname}",
            "",
        ]
        for name in own:
            obj = getattr(mod, name)
            where.setdefault(id(obj), f"{modname}.{name}")
            opts = ["   :members:"] if inspect.isclass(obj) else []
            if not inspect.isclass(obj) and not callable(obj):
                opts = ["   :no-value:"]
            lines += [f".. {_kind(obj)}:: {name}", *opts, ""]
        lines.append("```\n")
        if elsewhere:
            lines.append("Also available here (documented where they are defined): ")
            lines.append(
                ", ".join(
                    f"{{py:obj}}`{n} <{getattr(mod, n).__module__}.{getattr(mod, n).__qualname__}>`"
                    for n in elsewhere
                )
                + ".\n"
            )
        if is_pkg:
            lines += _submodule_sections(mod, where)
        bodies[modname] = "\n".join(lines)
        pages.append(modname)
    # Re-exports are documented under their home page: map them for the top-level table.
    import attnflow

    rows = []
    for name in attnflow.__all__:
        obj = getattr(attnflow, name)
        if inspect.ismodule(obj):
            target = obj.__name__
            rows.append(f"| {{py:mod}}`{name} <{target}>` | module | {_first_line(obj)} |")
            continue
        target = where.get(id(obj), f"{obj.__module__}.{getattr(obj, '__qualname__', name)}")
        kind = "class" if inspect.isclass(obj) else "function"
        rows.append(f"| {{py:obj}}`{name} <{target}>` | {kind} | {_first_line(obj)} |")
    top = [
        "# `attnflow`\n",
        "```{eval-rst}\n.. automodule:: attnflow\n   :no-members:\n```\n",
        f"Version {attnflow.__version__} (`attnflow.__version__`).\n",
        "The names of `import attnflow as af` and where each is documented:\n",
        "| name | kind | summary |",
        "|---|---|---|",
        *rows,
        "",
    ]
    bodies["attnflow"] = "\n".join(top)
    pages.insert(0, "attnflow")
    API_SRC.mkdir(exist_ok=True)
    keep = {f"{p}.md" for p in pages} | {"index.md", "cli-help.md"}
    for p in API_SRC.iterdir():
        if p.name not in keep:
            p.unlink()
    for modname, body in bodies.items():
        _write_if_changed(API_SRC / f"{modname}.md", body)
    index = [
        "# API reference\n",
        "Generated from the docstrings (numpydoc style). `import attnflow` needs numpy, scipy "
        "and numba only; `attnflow.fem` needs dolfinx and is imported explicitly. The "
        "application (`attnflow.app`: run configurations, the command line) is described in "
        "[the command line](../cli.md) and [run configurations](../config.md).\n",
        "```{toctree}\n:maxdepth: 1\n\n" + "\n".join(pages) + "\n```\n",
    ]
    _write_if_changed(API_SRC / "index.md", "\n".join(index))


def cli_help(app: Sphinx) -> None:
    """The ``--help`` of the ``attnflow`` command and its subcommands, as a generated page."""
    from attnflow.app.cli import build_parser

    parser = build_parser()
    parts = [
        "# `attnflow --help`\n",
        "The help of the command and of each subcommand, as printed by this version.\n",
        _fence(parser.format_help(), "text"),
    ]
    for action in parser._actions:  # argparse keeps subparsers here
        choices = getattr(action, "choices", None)
        if isinstance(choices, dict):
            for name, sub in choices.items():
                parts += [f"## `attnflow {name}`\n", _fence(sub.format_help(), "text")]
    _write_if_changed(API_SRC / "cli-help.md", "\n".join(parts))


# -- docstrings ---------------------------------------------------------------------------------
SECTION_NAMES = {
    "Parameters",
    "Other Parameters",
    "Returns",
    "Yields",
    "Raises",
    "Warns",
    "Attributes",
    "Methods",
    "Notes",
    "Examples",
    "References",
    "See Also",
    "Warnings",
    "Note",
    "Warning",
}
#: ``name : text`` (numpydoc entries; the house style puts the description on the same line).
ENTRY = re.compile(
    r"^(\*{0,2}[A-Za-z_][\w.]*(?:\[[^\]]*\])?(?:,\s*\*{0,2}[A-Za-z_][\w.]*)*)\s+:\s*(.*)$"
)


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip())


def numpy_sections_to_rst(lines: list[str]) -> list[str]:
    """The numpydoc docstrings of attnflow as reStructuredText.

    The house style writes ``name : description`` on one line (continuations indented) and
    continues a section with prose. Sections become rubrics, entries items of a definition
    list (the name as a literal, its text indented), prose after a blank line paragraphs; a
    paragraph followed by a more indented line gets the blank lines a block quote needs.
    Everything else (roles, literals, maths, doctests) passes unchanged.
    """
    out: list[str] = []
    i, n = 0, len(lines)
    in_field = False  # inside a definition list item (its continuation lines are indented)
    literal_indent = -1  # inside a literal block (after ``::``) deeper than this indent
    while i < n:
        line = lines[i]
        stripped = line.strip()
        if literal_indent >= 0:
            if stripped and _indent(line) <= literal_indent:
                literal_indent = -1
            else:
                out.append(line)
                i += 1
                continue
        nxt = lines[i + 1].strip() if i + 1 < n else ""
        if (
            stripped in SECTION_NAMES
            and _indent(line) == 0
            and nxt
            and set(nxt) == {"-"}
            and len(nxt) >= len(stripped) - 1
        ):
            if out and out[-1].strip():
                out.append("")
            out += [f".. rubric:: {stripped}", ""]
            in_field = False
            i += 2
            continue
        m = ENTRY.match(line) if _indent(line) == 0 else None
        if m and not stripped.startswith((">>>", "..", "* ", "- ")):
            if out and out[-1].strip() and not in_field:
                out.append("")
            names, text = m.group(1), m.group(2)
            out.append(f"``{names}``")  # a definition list: the name, then its text
            out.append(f"    {text}" if text else "    ..")
            in_field = True
            i += 1
            continue
        if not stripped:
            out.append(line)
            in_field = False
            i += 1
            continue
        prev = out[-1] if out else ""
        if in_field:
            if _indent(line) == 0:  # prose right after an entry: a new paragraph
                out.append("")
                in_field = False
            out.append(line)
        else:
            if (
                prev.strip()
                and _indent(line) > _indent(prev)
                and not prev.rstrip().endswith("::")
                and not prev.lstrip().startswith((".. ", "* ", "- ", ">>>"))
                and not re.match(r"^\s*(\d+\.|#\.)\s", prev)
            ):
                out.append("")  # an indented block after a paragraph: a block quote
            elif (
                prev.strip()
                and _indent(line) < _indent(prev)
                and out
                and not re.match(r"^\s*([*-]|\d+\.)\s", line)
            ):
                out.append("")  # the end of a block quote
            out.append(line)
        if stripped.endswith("::"):
            literal_indent = _indent(line)
        i += 1
    return out


def _process_docstring(app, what, name, obj, options, lines: list[str]) -> None:
    lines[:] = numpy_sections_to_rst(lines)


def _user_guide_toctrees(app: Sphinx, docname: str, source: list[str]) -> None:
    """The user guide lists the noise* and causal* pages that exist (written as they land)."""
    if docname != "user-guide":
        return
    for stem in ("noise", "causal"):
        found = sorted(p.stem for p in DOCS.glob(f"{stem}*.md"))
        found.sort(key=lambda s: (s != stem, s))
        source[0] = source[0].replace(f"{stem}*\n", "".join(f"{s}\n" for s in found))


class RepositoryPaths(SphinxPostTransform):
    """Links of the Markdown pages to files of the repository outside ``docs/`` (e.g.
    ``[examples/](../examples)``): there is no page to link to, so they become their text.
    Links to paths that do not exist still warn (an error under ``-W``)."""

    default_priority = 5  # before MyST resolves its references

    def run(self, **kwargs) -> None:
        from docutils import nodes
        from sphinx import addnodes

        for node in list(self.document.findall(addnodes.pending_xref)):
            if node.get("reftype") != "myst" or node.get("refdomain") == "doc":
                continue
            target = str(node.get("reftarget", "")).split("#")[0]
            if not target or "://" in target:
                continue
            source = Path(self.env.doc2path(node.get("refdoc", self.env.docname))).parent
            path = (source / target).resolve()
            if path.exists() and path.is_relative_to(ROOT) and not path.is_relative_to(DOCS):
                node.replace_self(node.children or [nodes.literal(text=target)])


def _generate(app: Sphinx) -> None:
    build_api(app)
    cli_help(app)
    build_gallery(app)


def _always_outdated(app, env, added, changed, removed) -> list[str]:
    """Pages read at every build: the user guide (its toctrees follow the pages that exist)
    and the API pages (autodoc does not notice a changed docstring)."""
    api = sorted(f"api/{p.stem}" for p in API_SRC.glob("*.md"))
    return ["user-guide", *api]


def setup(app: Sphinx) -> dict:
    app.connect("builder-inited", _generate)
    app.connect("autodoc-process-docstring", _process_docstring)
    app.add_post_transform(RepositoryPaths)
    app.connect("source-read", _user_guide_toctrees)
    app.connect("env-get-outdated", _always_outdated)
    return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True}
