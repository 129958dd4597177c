"""PETSc time stepping for the finite element solver: options in and out, and the TS.

``petsc_options`` follow dolfinx 0.11's ``LinearProblem``: a dict of options without the
leading dash, set under a prefix (default ``attnflow_``) in PETSc's global options database for
the time the TS reads them, and removed again afterwards with ``try/finally`` (Firedrake's
``OptionsManager.inserted_options``), so that nothing of a solve is left in the process.
Options that were already in the database (e.g. given on the command line) are restored to
their value; the solver's defaults (``ts_type ssp``, ``ts_ssp_type rks3``,
``ts_ssp_num_stages 4``: SSPRK(4,3), third order, SSP coefficient 2) give way to both.

With noise (``Dynamics.noisy``) the defaults are :data:`DEFAULT_IMEX_OPTIONS`: PETSc's additive
Runge–Kutta IMEX ``arkimex`` with the diffusion implicit and the transport explicit, of type
``1bee``. Its tableau (implicit ``A~``, explicit ``A``, weights ``b`` for both)

    A~ = [[1, 0, 0], [0, 1/2, 0], [0, 1/2, 1/2]],  A = [[0, 0, 0], [0, 0, 0], [0, 1/2, 0]],
    b = (0, 1/2, 1/2)

makes the step the composition ``E(h/2) I(h/2) E(h/2) I(h/2)`` of forward Euler transport
half steps ``E`` and backward Euler diffusion half steps ``I = (1 + (h/2) sigma B)^{-1}`` (the
first stage, a full backward Euler step, only feeds PETSc's error estimate). Every factor keeps
``rho >= 0`` for DG0: ``E`` under the forward Euler CFL bound (so the step may be twice it:
:data:`IMEX_CFL_COEFFICIENT`), ``I`` for any step because ``M + tau sigma A`` is an M-matrix.
It is first order in time and L-stable. No IMEX Runge–Kutta scheme of order > 1 keeps
positivity for every ``sigma dt / h^2`` (the implicit part would have to be an unconditionally
positive Runge–Kutta method, and those are first order, Bolley–Crouzeix 1978); the
higher-order ARKIMEX types (``ts_arkimex_type 2e``, ``3``, ``4``, ...) are available through
the options, accurate to their order, with ``min_density`` recorded to show what they do.
The adaptive step is switched off (``ts_adapt_type none``): the step is the transport CFL step.
The implicit stages are linear: ``snes_type ksponly`` and a direct solve (``ksp_type preonly``,
LU with MUMPS, which the PETSc wheel has and which runs on any number of ranks). Unless a KSP or
PC is given in the options, the solver keeps one factorisation per ``(shift, sigma)``
(:class:`attnflow.fem.diffusion.StageSolves`: 1BEE alternates two shifts); any KSP/PC can be
chosen through the options instead (e.g. ``{"ksp_type": "gmres", "pc_type": "bjacobi"}``, keys
without prefix; an inexact solve then conserves mass only to its tolerance).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from typing import Any

from petsc4py import PETSc

__all__ = [
    "DEFAULT_IMEX_OPTIONS",
    "DEFAULT_TS_OPTIONS",
    "EXPLICIT_TS_TYPES",
    "IMEX_CFL_COEFFICIENT",
    "SSP_COEFFICIENT",
    "check_petsc_options",
    "inserted_options",
]

#: The default explicit SSP Runge–Kutta scheme: SSPRK(4,3).
DEFAULT_TS_OPTIONS: dict[str, str] = {
    "ts_type": "ssp",
    "ts_ssp_type": "rks3",
    "ts_ssp_num_stages": "4",
}
#: SSP coefficient of SSPRK(4,3) (the CFL step is multiplied by it).
SSP_COEFFICIENT = 2.0

#: The default time stepping of noisy dynamics: ARKIMEX 1BEE, fixed step, one direct linear
#: solve per implicit stage (module docstring).
DEFAULT_IMEX_OPTIONS: dict[str, str] = {
    "ts_type": "arkimex",
    "ts_arkimex_type": "1bee",
    "ts_adapt_type": "none",
    "snes_type": "ksponly",
    "ksp_type": "preonly",
    "pc_type": "lu",
    "pc_factor_mat_solver_type": "mumps",
}
#: The transport step of ARKIMEX 1BEE is two forward Euler half steps: the CFL step is
#: multiplied by 2, as for SSPRK(4,3).
IMEX_CFL_COEFFICIENT = 2.0

#: Explicit TS types: with noise they integrate the diffusion explicitly too, under the
#: explicit diffusion step bound (the solver caps its step and says so).
EXPLICIT_TS_TYPES = ("ssp", "rk", "euler")


def check_petsc_options(
    options: Mapping[str, Any] | None, prefix: str | None = None
) -> dict[str, Any]:
    """``options`` as a new dict (``{}`` for ``None``); a ``TypeError`` unless it is a mapping,
    a ``ValueError`` unless ``prefix`` (when given) is a non-empty string."""
    if options is not None and not isinstance(options, Mapping):
        raise TypeError(f"petsc_options must be a dict, got {type(options).__name__}")
    if prefix is not None and (not isinstance(prefix, str) or not prefix):
        raise ValueError(f"petsc_options_prefix must be a non-empty string, got {prefix!r}")
    return dict(options or {})


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
