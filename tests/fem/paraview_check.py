"""Run by pvpython (Debian's ParaView): open an XDMF file, print what ParaView sees as JSON.

Usage: pvpython paraview_check.py FILE.xdmf
"""

import json
import sys

from paraview import servermanager
from paraview.simple import Xdmf3ReaderT


def leaves(data):
    if data.IsA("vtkMultiBlockDataSet"):
        for i in range(data.GetNumberOfBlocks()):
            yield from leaves(data.GetBlock(i))
    elif data is not None:
        yield data


reader = Xdmf3ReaderT(FileName=[sys.argv[1]])
reader.UpdatePipelineInformation()
times = [float(t) for t in reader.TimestepValues]
reader.UpdatePipeline(times[-1] if times else 0.0)
data = servermanager.Fetch(reader)
out = {"times": times, "cells": 0, "cell_arrays": [], "point_arrays": [], "range": None}
for block in leaves(data):
    out["cells"] = max(out["cells"], block.GetNumberOfCells())
    cd, pd = block.GetCellData(), block.GetPointData()
    out["cell_arrays"] += [cd.GetArrayName(i) for i in range(cd.GetNumberOfArrays())]
    out["point_arrays"] += [pd.GetArrayName(i) for i in range(pd.GetNumberOfArrays())]
    if cd.GetArray("density") is not None:
        out["range"] = list(cd.GetArray("density").GetRange())
print("PARAVIEW " + json.dumps(out))
