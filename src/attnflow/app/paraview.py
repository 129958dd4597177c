"""The ParaView script of a run directory: ``view.py`` (for ``pvpython`` or ParaView's shell).

:func:`write_view_script` writes ``RUN_DIR/view.py``. Run it as

    pvpython RUN_DIR/view.py                          # an interactive window
    xvfb-run -a pvpython RUN_DIR/view.py --screenshot out.png   # no display (Debian's ParaView)

or *View → Python Shell → Run Script* in the ParaView GUI. It opens

* the finite element density ``fem/density.pvd`` (one grid per save time carrying the cell
  data ``density`` and the point data ``velocity``, see :class:`attnflow.io.VTUSeries`),
  coloured by ``density`` with the ``Viridis (matplotlib)`` map (its lightness grows
  monotonically: it prints as a grey ramp), the colour range fixed over all save times and a
  labelled colour bar;
* arrows of the velocity (a ``Glyph`` filter on the same reader: oriented and scaled by
  ``velocity``; the largest arrow is 5 % of the domain's diagonal; at most about 48 (circle),
  200 (sphere) or 400 (box) arrows);
* the particles of run 0 ``particles.pvd`` as white discs with a black edge (readable on every
  colour of the map and in grey; grey discs when there is no density), drawn just outside the
  sphere or circle and just above a planar box so that the density does not hide them;
* the time as text, the last save time by default (``--time T`` for another).

Files that a run did not write (a particles-only or finite-element-only run) are skipped. The
paths are found next to the script, so the run directory can be moved.
"""

from __future__ import annotations

from pathlib import Path

from attnflow.io import write_text_atomic

__all__ = ["VIEW_SCRIPT", "write_view_script"]

#: The name of the script in a run directory.
VIEW_SCRIPT = "view.py"

_TEMPLATE = r'''"""ParaView view of the attnflow run {name!r} (written by attnflow {version}).

    pvpython view.py                                  # interactive window
    xvfb-run -a pvpython view.py --screenshot out.png # no display
    (or ParaView GUI: View > Python Shell > Run Script)

Options: --screenshot FILE (PNG), --time T (default: the last save time), --size W H.
"""

import argparse
import math
import os
import sys

import paraview
from paraview.simple import (
    AnnotateTimeFilter,
    ColorBy,
    GetActiveViewOrCreate,
    GetAnimationScene,
    GetColorTransferFunction,
    GetScalarBar,
    Glyph,
    Interact,
    PVDReader,
    Render,
    SaveScreenshot,
    Show,
)

GEOMETRY = {geometry!r}  # "circle", "sphere" or "box"
try:
    HERE = os.path.dirname(os.path.abspath(__file__))
except NameError:  # some ParaView shells run the script without __file__
    HERE = {run_dir!r}
DENSITY = os.path.join(HERE, "fem", "density.pvd")
PARTICLES = os.path.join(HERE, "particles.pvd")
MAX_ARROWS = {{"circle": 48, "sphere": 200, "box": 400}}
ARROW_COLOUR = [0.835, 0.369, 0.0]  # Okabe-Ito vermillion: visible on the map and on white


def arguments():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--screenshot", help="save a PNG screenshot to this file and exit")
    p.add_argument("--time", type=float, help="the time shown (default: the last save time)")
    p.add_argument("--size", type=int, nargs=2, default=[1200, 900], metavar=("W", "H"))
    args, _ = p.parse_known_args(sys.argv[1:])
    return args


def array_range(source, name, times):
    """The range of the cell array over all times (a colour scale fixed in time)."""
    lo, hi = math.inf, -math.inf
    for t in times or [0.0]:
        source.UpdatePipeline(t)
        a = source.CellData[name]
        if a is not None:
            r = a.GetRange()
            lo, hi = min(lo, r[0]), max(hi, r[1])
    return (lo, hi) if lo <= hi else (0.0, 1.0)


def main():
    args = arguments()
    view = GetActiveViewOrCreate("RenderView")
    view.ViewSize = list(args.size)
    view.OrientationAxesVisibility = 0
    try:  # ParaView >= 5.10: the palette would override the background
        view.UseColorPaletteForBackground = 0
    except AttributeError:
        pass
    view.Background = [1.0, 1.0, 1.0]
    shown = []
    times = []
    diag = 2.0
    if os.path.exists(DENSITY):
        reader = PVDReader(registrationName="density", FileName=DENSITY)
        reader.UpdatePipelineInformation()
        times = list(reader.TimestepValues) if reader.TimestepValues else [0.0]
        lo, hi = array_range(reader, "density", times)
        t = times[-1] if args.time is None else args.time
        reader.UpdatePipeline(t)
        b = reader.GetDataInformation().GetBounds()
        diag = math.sqrt(sum((b[2 * i + 1] - b[2 * i]) ** 2 for i in range(3))) or 2.0
        disp = Show(reader, view)
        ColorBy(disp, ("CELLS", "density"))
        lut = GetColorTransferFunction("density")
        lut.ApplyPreset("Viridis (matplotlib)", True)
        lut.RescaleTransferFunction(lo, hi)
        lut.AutomaticRescaleRangeMode = "Never"
        if GEOMETRY == "circle":
            disp.LineWidth = 6.0
            disp.RenderLinesAsTubes = 1
        bar = GetScalarBar(lut, view)
        bar.Title = "density"
        bar.ComponentTitle = ""
        bar.TitleColor = bar.LabelColor = [0.0, 0.0, 0.0]
        bar.TitleFontSize = bar.LabelFontSize = 16
        bar.RangeLabelFormat = "%-#.3g"
        bar.WindowLocation = "Any Location"
        bar.Position = [0.84, 0.1]
        bar.ScalarBarLength = 0.8
        disp.SetScalarBarVisibility(view, True)
        shown.append("density")
        # Velocity arrows: a Glyph of the same reader (velocity is point data of this grid).
        speed = reader.PointData["speed"].GetRange()[1] if reader.PointData["speed"] else 0.0
        n_points = reader.GetDataInformation().GetNumberOfPoints()
        if speed > 0:
            glyph = Glyph(registrationName="velocity", Input=reader, GlyphType="Arrow")
            glyph.OrientationArray = ["POINTS", "velocity"]
            glyph.ScaleArray = ["POINTS", "velocity"]
            glyph.ScaleFactor = 0.05 * diag / speed
            glyph.GlyphType.TipRadius = 0.08
            glyph.GlyphType.ShaftRadius = 0.02
            glyph.GlyphMode = "Every Nth Point"
            glyph.Stride = max(1, n_points // MAX_ARROWS[GEOMETRY])
            gd = Show(glyph, view)
            gd.ColorArrayName = ["POINTS", ""]
            gd.AmbientColor = gd.DiffuseColor = ARROW_COLOUR
            if GEOMETRY == "box":
                gd.Position = [0.0, 0.0, 0.01 * diag]
            shown.append("velocity")
    if os.path.exists(PARTICLES):
        parts = PVDReader(registrationName="particles", FileName=PARTICLES)
        parts.UpdatePipelineInformation()
        if not times and parts.TimestepValues:
            times = list(parts.TimestepValues)
        pd = Show(parts, view)
        pd.ColorArrayName = ["POINTS", ""]
        pd.SetRepresentationType("Point Gaussian")
        pd.ShaderPreset = "Black-edged circle"
        if "density" not in shown:  # the particles alone: their extent, dark discs
            parts.UpdatePipeline(times[-1] if times else 0.0)
            b = parts.GetDataInformation().GetBounds()
            diag = math.sqrt(sum((b[2 * i + 1] - b[2 * i]) ** 2 for i in range(3))) or 2.0
        pd.GaussianRadius = (0.01 if GEOMETRY == "circle" else 0.006) * diag
        white = [1.0, 1.0, 1.0] if "density" in shown else [0.3, 0.3, 0.3]
        pd.AmbientColor = pd.DiffuseColor = white
        if GEOMETRY in ("sphere", "circle"):
            r = 1.08 if GEOMETRY == "circle" else 1.03
            pd.Scale = [r, r, r]  # just outside the density
        else:
            pd.Position = [0.0, 0.0, 0.02 * diag]
        shown.append("particles")
    if not shown:
        sys.exit("view.py: no fem/density.pvd and no particles.pvd next to this script")
    scene = GetAnimationScene()
    scene.UpdateAnimationUsingDataTimeSteps()
    t = times[-1] if (args.time is None and times) else (args.time or 0.0)
    scene.AnimationTime = t
    source = reader if "density" in shown else parts
    label = AnnotateTimeFilter(registrationName="time", Input=source)
    label.Format = "t = {{time:.4g}}"
    ld = Show(label, view)
    ld.Color = [0.0, 0.0, 0.0]
    ld.FontSize = 18
    ld.WindowLocation = "Upper Left Corner"
    cam = view.GetActiveCamera()
    if GEOMETRY == "sphere":
        view.CameraPosition = [4.0, 4.0, 2.4]
        view.CameraFocalPoint = [0.0, 0.0, 0.0]
        view.CameraViewUp = [0.0, 0.0, 1.0]
    else:
        view.InteractionMode = "2D"
        view.CameraPosition = [0.0, 0.0, 10.0]
        view.CameraFocalPoint = [0.0, 0.0, 0.0]
        view.CameraViewUp = [0.0, 1.0, 0.0]
    view.ResetCamera()
    cam.Zoom(0.9)
    Render(view)
    print("view.py: shown " + ", ".join(shown) + " at t = %.6g" % t)
    if args.screenshot:
        SaveScreenshot(args.screenshot, view, ImageResolution=list(args.size))
        print("view.py: wrote " + args.screenshot)
    elif not paraview.fromGUI:
        Interact(view)


main()
'''


def write_view_script(run_dir: str | Path, *, name: str, geometry: str) -> Path:
    """Write ``run_dir/view.py``, the ParaView script of a run (module docstring).

    Parameters
    ----------
    run_dir : the run directory (its ``fem/density.pvd`` and ``particles.pvd`` are opened
        when present).
    name : the run's name (in the script's docstring).
    geometry : ``"circle"``, ``"sphere"`` or ``"box"`` (camera, line width, offsets).

    Returns
    -------
    The path written (atomically).
    """
    if geometry not in ("circle", "sphere", "box"):
        raise ValueError(f"geometry must be 'circle', 'sphere' or 'box', got {geometry!r}")
    import attnflow

    run_dir = Path(run_dir).absolute()
    text = _TEMPLATE.format(
        name=str(name),
        version=attnflow.__version__,
        geometry=geometry,
        run_dir=str(run_dir),
    )
    return write_text_atomic(run_dir / VIEW_SCRIPT, text)
