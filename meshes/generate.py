"""Generate the committed sphere meshes (icosahedral refinement, levels 0-4) into meshes/.

Usage: python meshes/generate.py [--max-level 4]. Larger levels are generated on demand by
attnflow.fem.sphere_mesh and cached under $XDG_CACHE_HOME/attnflow/meshes.
"""

import argparse
from pathlib import Path

import numpy as np

from attnflow.fem.meshes import icosphere

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--max-level", type=int, default=4)
args = parser.parse_args()
here = Path(__file__).resolve().parent
for level in range(args.max_level + 1):
    points, cells = icosphere(level)
    np.savez_compressed(here / f"sphere_{level}.npz", points=points, cells=cells)
    print(f"sphere_{level}.npz: {len(points)} vertices, {len(cells)} triangles")
