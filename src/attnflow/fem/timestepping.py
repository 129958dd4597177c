"""PETSc time stepping for the finite element solver: options in and out, and the TS.

``petsc_options`` follow dolfinx 0.11's ``LinearProblem``: a dict of options without the
leading dash, set under a prefix (default ``attnflow_``) in PETSc's global options database for
the time the TS reads them, and removed again afterwards with ``try/finally`` (Firedrake's
``OptionsManager.inserted_options``), so that nothing of a solve is left in the process.
Options that were already in the database (e.g. given on the command line) are restored to
their value; the solver's defaults (``ts_type ssp``, ``ts_ssp_type rks3``,
``ts_ssp_num_stages 4``: SSPRK(4,3), third order, SSP coefficient 2) give way to both.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from typing import Any

from petsc4py import PETSc

__all__ = ["DEFAULT_TS_OPTIONS", "SSP_COEFFICIENT", "inserted_options"]

#: The default explicit SSP Runge–Kutta scheme: SSPRK(4,3).
DEFAULT_TS_OPTIONS: dict[str, str] = {
    "ts_type": "ssp",
    "ts_ssp_type": "rks3",
    "ts_ssp_num_stages": "4",
}
#: SSP coefficient of SSPRK(4,3) (the CFL step is multiplied by it).
SSP_COEFFICIENT = 2.0


def _value(v: Any) -> str | None:
    if v is None:
        return None
    if isinstance(v, bool):
        return "true" if v else "false"
    return str(v)


@contextlib.contextmanager
def inserted_options(
    prefix: str,
    options: Mapping[str, Any] | None = None,
    defaults: Mapping[str, Any] | None = None,
) -> Iterator[None]:
    """Insert ``options`` (and ``defaults`` not already set) under ``prefix`` into PETSc's
    global options database for the duration of the block; restore the database afterwards.

    ``options`` override anything already in the database; ``defaults`` only fill in options
    that are absent (command-line options win). Keys are given without the leading dash and
    without the prefix.
    """
    opts = PETSc.Options()
    saved: dict[str, str | None] = {}
    try:
        for k, v in (defaults or {}).items():
            key = prefix + k
            if not opts.hasName(key):
                saved.setdefault(key, None)
                opts.setValue(key, _value(v))
        for k, v in (options or {}).items():
            key = prefix + str(k).lstrip("-")
            if key not in saved:
                saved[key] = opts.getString(key) if opts.hasName(key) else None
            opts.setValue(key, _value(v))
        yield
    finally:
        for key, old in saved.items():
            if old is None:
                opts.delValue(key)
            else:
                opts.setValue(key, old)
