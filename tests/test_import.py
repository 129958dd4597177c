import subprocess
import sys


def test_import_pulls_in_no_dolfinx_nor_petsc():
    code = (
        "import sys, attnflow; "
        "bad = [m for m in ('dolfinx', 'petsc4py', 'ufl', 'pyvista', 'matplotlib', 'ot') "
        "if m in sys.modules]; print(','.join(bad))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_public_api_is_explicit():
    import attnflow

    assert set(attnflow.__all__) <= set(dir(attnflow))
    for name in ("SelfAttention", "simulate", "ensemble", "kernel_sums", "Solution"):
        assert name in attnflow.__all__
