"""The package's matplotlib style (attnflow.app.style) and the demos' ``--format`` option."""

import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import matplotlib
import numpy as np
import pytest
from mpi4py import MPI

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from attnflow.app import style

DEMO_DIR = Path(__file__).resolve().parent.parent / "demos"
# A cheap demo (particles only, a few seconds at --small).
CHEAP_DEMO = "demo_depth_models.py"


def _relative_luminance(rgb: np.ndarray) -> np.ndarray:
    """Relative luminance (ITU-R BT.709) of sRGB colours, rows (n, 3) in [0, 1]."""
    lin = np.where(rgb <= 0.04045, rgb / 12.92, ((rgb + 0.055) / 1.055) ** 2.4)
    return lin @ np.array([0.2126, 0.7152, 0.0722])


def test_default_colormap_prints_as_a_monotone_grey_ramp():
    with matplotlib.rc_context(style.style_params()):
        cmap = matplotlib.colormaps[matplotlib.rcParams["image.cmap"]]
    y = _relative_luminance(cmap(np.linspace(0, 1, 256))[:, :3])
    assert np.all(np.diff(y) > 0), "luminance of the default colour map is not increasing"
    # A rainbow map fails the same check (the test can fail).
    jet = _relative_luminance(matplotlib.colormaps["jet"](np.linspace(0, 1, 256))[:, :3])
    assert not np.all(np.diff(jet) > 0)


def test_line_cycle_differs_in_dash_and_grey():
    cyc = list(style.style_params()["axes.prop_cycle"])
    dashes = [str(c["linestyle"]) for c in cyc]
    assert len(set(dashes)) == len(cyc)
    rgb = np.array([matplotlib.colors.to_rgb(c["color"]) for c in cyc])
    grey = _relative_luminance(rgb)
    assert np.all(np.abs(np.diff(grey)) > 0.1)  # neighbours differ in grey too


def _figure(**kw):
    with matplotlib.rc_context(style.style_params()):
        return plt.subplots(**kw)


def test_check_figure_requires_labels():
    fig, ax = _figure()
    ax.plot([0, 1], [0, 1])
    with pytest.raises(style.FigureLabelError, match="xlabel"):
        style.check_figure(fig)
    ax.set_xlabel("time $t$")
    with pytest.raises(style.FigureLabelError, match="ylabel"):
        style.check_figure(fig)
    ax.set_ylabel("mass")
    style.check_figure(fig)
    im = ax.imshow(np.eye(3))
    bar = fig.colorbar(im, ax=ax)
    with pytest.raises(style.FigureLabelError, match="colour bar"):
        style.check_figure(fig)
    bar.set_label("density")
    style.check_figure(fig)
    plt.close(fig)


def test_check_figure_shared_and_exempt_axes():
    fig, axes = _figure(ncols=3, sharey=True)
    for ax in axes[:2]:
        ax.plot([0, 1], [1, 0])
        ax.set_xlabel("x")
    axes[0].set_ylabel("y")  # shared: labels the row
    axes[2].imshow(np.eye(2))
    axes[2].set_axis_off()  # an image (a sphere view): exempt
    style.check_figure(fig)
    axes[1].set_xlabel("")
    with pytest.raises(style.FigureLabelError, match="axes 1"):
        style.check_figure(fig)
    plt.close(fig)


def test_save_figure_formats(tmp_path):
    fig, ax = _figure()
    ax.plot([0, 1], [0, 1])
    ax.set(xlabel="x", ylabel="y")
    paths = style.save_figure(fig, tmp_path / "sub" / "fig.png", ["png", "pdf", "svg"])
    assert [p.name for p in paths] == ["fig.png", "fig.pdf", "fig.svg"]
    _check_files(tmp_path / "sub", "fig", ["png", "pdf", "svg"])
    fig, ax = _figure()
    with pytest.raises(ValueError, match="formats"):
        style.save_figure(fig, tmp_path / "x", ["jpg"])
    assert not list(tmp_path.glob("x.*"))
    plt.close(fig)


def _check_files(folder: Path, stem: str, formats: list[str]) -> None:
    for fmt in formats:
        data = (folder / f"{stem}.{fmt}").read_bytes()
        if fmt == "png":
            assert data.startswith(b"\x89PNG\r\n\x1a\n")
        elif fmt == "pdf":
            assert data.startswith(b"%PDF-") and data.rstrip().endswith(b"%%EOF")
        else:
            assert ET.fromstring(data).tag == "{http://www.w3.org/2000/svg}svg"


def test_sphere_helpers(tmp_path):
    from attnflow.meshdata import icosphere

    v, f = icosphere(1)
    const = style.cell_to_vertex(v, f, np.full(f.shape[0], 2.5))
    assert np.allclose(const, 2.5)
    rv, rf, rval = style.refine_sphere(v, f, v[:, 2], levels=2)
    assert rf.shape == (16 * f.shape[0], 3)
    assert np.allclose(np.linalg.norm(rv, axis=1), 1.0)
    # Euler: a closed triangulated sphere has V - E + F = 2, E = 3F/2.
    assert rv.shape[0] - 3 * rf.shape[0] // 2 + rf.shape[0] == 2
    assert np.allclose(rval[: v.shape[0]], v[:, 2])  # old vertices keep their values
    assert rval.min() >= v[:, 2].min() and rval.max() <= v[:, 2].max()  # interpolation
    fig, axes = _figure(ncols=2)
    m = style.sphere_views(axes, rv, rf, rval)
    bar = fig.colorbar(m, ax=axes)
    bar.set_label("$x_3$")
    style.check_figure(fig)
    assert all(not ax.axison for ax in axes)
    # The shaded surface is rasterised: its 1280 Gouraud triangles as SVG paths take 2.4 MB,
    # as an embedded image 0.1 MB.
    (svg,) = style.save_figure(fig, tmp_path / "sphere", ["svg"])
    assert svg.stat().st_size < 1_000_000
    _check_files(tmp_path, "sphere", ["svg"])


@pytest.mark.skipif(MPI.COMM_WORLD.size > 1, reason="runs a demo as a subprocess (serial)")
def test_demo_writes_pdf_and_svg(tmp_path):
    env = dict(os.environ, MPLBACKEND="Agg", OMP_NUM_THREADS="1")
    cmd = [sys.executable, str(DEMO_DIR / CHEAP_DEMO), "--small", "--format", "pdf", "svg"]
    out = subprocess.run(
        [*cmd, "--output", str(tmp_path)], capture_output=True, text=True, env=env, timeout=300
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert not list(tmp_path.glob("*.png"))
    stems = sorted(p.stem for p in tmp_path.glob("*.pdf"))
    assert stems and stems == sorted(p.stem for p in tmp_path.glob("*.svg"))
    for stem in stems:
        _check_files(tmp_path, stem, ["pdf", "svg"])
