"""Generate the sphere meshes shipped with the package (icosahedral refinement, levels 0-4).

Usage: python meshes/generate.py [--max-level 4]. The files go to src/attnflow/data/meshes/
(package data, so that an installed wheel finds them). Larger levels are generated on demand by
attnflow.meshdata.sphere_arrays and cached under $XDG_CACHE_HOME/attnflow/meshes.
"""

import argparse
from pathlib import Path

from attnflow.meshdata import icosphere, write_mesh

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--max-level", type=int, default=4)
args = parser.parse_args()
out = Path(__file__).resolve().parents[1] / "src" / "attnflow" / "data" / "meshes"
out.mkdir(parents=True, exist_ok=True)
for level in range(args.max_level + 1):
    points, cells = icosphere(level)
    write_mesh(out / f"sphere_{level}.npz", points, cells)
    print(f"sphere_{level}.npz: {len(points)} vertices, {len(cells)} triangles")
