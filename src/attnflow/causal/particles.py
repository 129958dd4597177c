"""Causal particle systems: prompts of ``N`` tokens where token ``j`` sees only tokens ``k < j``
(or ``k <= j``), integrated for many prompts at once.

(One idea, one module: the causal particle solver — the velocities of its two models, the
integrator batched over prompts and ranks, and the Monte Carlo estimator read off its
ensembles.)

Conventions (the lost-in-the-middle model, Duerinckx–Geshkovski–Rossi arXiv:2605.09213 and its
companion code borjanG/2026-lost-in-the-middle). A prompt is ``N`` tokens ``x_1 .. x_N`` on
``S^{d-1}`` at positions ``s_j = j/N``; arrays are 0-based (row ``j`` is token ``j + 1``).
Two models:

1. **The interaction form** (:class:`CausalInteraction`, the paper's model):

       dx_j/dt = sum_{k<j} w_jk grad_S e^{beta <x_j, x_k>}
               = beta sum_{k<j} w_jk e^{beta <x_j, x_k>} P_{x_j} x_k,

   with the ALiBi weights ``w_jk = e^{-(lambda/N)(j-k)} / sum_{k'<j} e^{-(lambda/N)(j-k')}``
   (:func:`attnflow.causal.weights.alibi_weights`) and ``P_x = I - x x^T``. On ``S^1``,
   ``x = (cos theta, sin theta)``, this is ``theta_j' = sum_{k<j} w_jk W'(theta_j - theta_k)``
   with ``W(theta) = e^{beta cos theta}`` (the companion code's ``force``). Token 1 attends to
   nothing and does not move. The field is not normalised: it grows like ``beta e^{beta}``;
   ``rescale=True`` multiplies it by ``e^{-beta}`` (time in units of ``e^{beta}``).

2. **Causal softmax attention** (``SelfAttention(..., causal=True, alibi=lambda)``, what
   decoders do): token ``j`` attends to ``k <= j`` with the scores
   ``beta <Q x_j, K x_k> - (lambda/N)(j - k)``, softmax over ``k <= j``, and moves with
   ``P_{x_j} sum_{k<=j} softmax_k V (x_k - c x_j)`` as in :class:`attnflow.SelfAttention`
   (``c = 1`` when ``centered``; on the sphere or in R^d). The softmax is evaluated with the
   maximum score of each row subtracted (log-sum-exp), so ``beta = 1e4`` runs without overflow.

Numerics. Prompts are independent: an array ``(P, N, d)`` of prompts is integrated in chunks of
prompts with numpy (the ``N x N`` causal interactions of a chunk are batched matrix products and
one ``exp``), each chunk over the whole event grid (:func:`attnflow.timegrid.time_grid`,
:func:`attnflow.particles.stepping.march`: save times hit exactly) with
:class:`~attnflow.particles.integrate.RK4` (or Euler) in the ambient space followed by the
retraction ``x -> x/|x|`` on the sphere (order 4 is kept, as for :func:`attnflow.simulate`).
Memory and steps are estimated and refused before any work (:func:`prompt_memory`,
:mod:`attnflow.resources`).

MPI. The prompts are dealt round-robin to the ranks of ``comm``; prompt ``r`` of
:func:`prompt_ensemble` draws its tokens from ``SeedSequence(seed).spawn(P)[r]``. A prompt's
arithmetic does not depend on the other prompts of its chunk, so the results are identical
(bitwise) for any number of ranks and any chunk size, and gathered on every rank.

Monte Carlo of the retrieval correlation: :func:`correlation_mc` estimates
``N E[e^{-i n theta_N(t)} e^{i n theta_k(0)}]`` (real part) from an ensemble on ``S^1``, with a
zero-mean control variate and standard errors; :func:`attnflow.causal.theory.correlation_kernel`
is its ``N -> infinity`` limit.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from attnflow.causal.weights import alibi_weights, check_slope
from attnflow.geometry import Geometry, sphere
from attnflow.laws import Law, UniformSphere
from attnflow.model import SelfAttention, check_causal
from attnflow.particles.integrate import RK4, Euler
from attnflow.particles.stepping import march
from attnflow.resources import check_memory, check_steps, format_bytes, memory_budget
from attnflow.solutions import EnsembleSolution, Solution, Status
from attnflow.timegrid import check_dt, time_grid
from attnflow.validation import check_int, check_positive, check_real

__all__ = [
    "CausalInteraction",
    "CorrelationEstimate",
    "causal_velocity",
    "correlation_mc",
    "ensemble_causal",
    "prompt_ensemble",
    "prompt_memory",
    "simulate_causal",
    "simulate_prompts",
]

logger = logging.getLogger(__name__)

#: Default bytes of the working arrays of one chunk of prompts (the ``N x N`` blocks).
CHUNK_BYTES = 32 << 20

# exp(709.78) is the largest finite float64.
_LOG_MAX = 709.0


@dataclass(frozen=True)
class CausalInteraction:
    """The causal interaction model of the lost-in-the-middle paper on ``S^{d-1}``.

    ``dx_j/dt = beta sum_{k<j} w_jk e^{beta <x_j, x_k>} P_{x_j} x_k`` with the ALiBi weights
    ``w_jk`` of slope ``lam`` (module docstring); on ``S^1`` this is
    ``theta_j' = sum_{k<j} w_jk W'(theta_j - theta_k)``, ``W = e^{beta cos}``.

    Parameters
    ----------
    d : ambient dimension (tokens on ``S^{d-1}``), ``>= 2``.
    beta : interaction strength ``> 0`` (finite).
    lam : ALiBi slope ``>= 0`` (``0``: uniform weights over the earlier tokens).
    rescale : multiply the field by ``e^{-beta}`` (run in the time ``e^{beta} t``): the kernel
        is then ``e^{beta (<x, y> - 1)} <= 1`` and the field at most ``beta``, for any ``beta``.
        Without it, ``beta e^{beta}`` must fit in float64 (``beta`` up to about 700).

    Immutable and validated; ``causal`` is ``True`` (the measure-field solvers refuse it).
    """

    d: int
    beta: float = 1.0
    lam: float = 0.0
    rescale: bool = False

    causal: ClassVar[bool] = True
    sphere: ClassVar[bool] = True

    def __post_init__(self) -> None:
        d = check_int("d", self.d, 2)
        beta = check_positive("beta", self.beta)
        lam = check_slope(self.lam)
        if not isinstance(self.rescale, (bool, np.bool_)):
            raise TypeError(f"rescale must be a bool, got {self.rescale!r}")
        if not self.rescale and beta * 1.01 + math.log(beta) > _LOG_MAX:
            raise ValueError(
                f"beta={beta:g}: the field beta e^beta of CausalInteraction overflows float64; "
                "use rescale=True (the field times e^-beta) or beta <= 700"
            )
        object.__setattr__(self, "d", d)
        object.__setattr__(self, "beta", beta)
        object.__setattr__(self, "lam", lam)
        object.__setattr__(self, "rescale", bool(self.rescale))

    @property
    def geometry(self) -> Geometry:
        """The unit sphere (:func:`attnflow.geometry.sphere`)."""
        return sphere()

    def weights(self, n: int) -> np.ndarray:
        """(n, n) ALiBi weights ``w_jk`` (:func:`attnflow.causal.weights.alibi_weights`)."""
        return alibi_weights(n, self.lam)

    def speed_bound(self) -> float:
        """A priori bound of ``|dx_j/dt|`` on the sphere: ``beta e^{beta}`` (``beta`` with
        ``rescale``)."""
        return self.beta if self.rescale else self.beta * math.exp(self.beta)


# -- the right-hand sides ----------------------------------------------------------------------
def _check_model(model: object) -> CausalInteraction | SelfAttention:
    if isinstance(model, CausalInteraction):
        return model
    if isinstance(model, SelfAttention):
        if not model.causal:
            raise ValueError(
                "model must be causal: SelfAttention(..., causal=True) or CausalInteraction "
                "(non-causal attention runs with attnflow.simulate / attnflow.ensemble)"
            )
        return model
    check_causal(model)  # a composite holding a causal term: its own clear error
    raise TypeError(
        "model must be a CausalInteraction or a SelfAttention(..., causal=True), got "
        f"{type(model).__name__}"
    )


def _rhs(
    model: CausalInteraction | SelfAttention, n: int
) -> Callable[[np.ndarray, float], np.ndarray]:
    """``f(x, t)``: the projected velocities (c, n, d) of ``c`` prompts ``x`` (c, n, d)."""
    geo = model.geometry
    d = model.d
    if isinstance(model, CausalInteraction):
        w = model.weights(n)
        beta, shift = model.beta, (1.0 if model.rescale else 0.0)

        def interaction(x: np.ndarray, t: float) -> np.ndarray:
            g = np.matmul(x, x.swapaxes(-1, -2))  # (c, n, n) <x_j, x_k>
            if shift:
                g -= shift
            g *= beta
            np.exp(g, out=g)
            g *= w  # strictly lower triangular: k < j only, row 0 zero
            u = np.matmul(g, x)
            return geo.project(x, beta * u)

        return interaction

    j = np.arange(n, dtype=np.float64)
    lag = j[:, None] - j[None, :]
    bias = np.where(lag >= 0, -(model.alibi / n) * lag, -np.inf)  # (n, n), -inf for k > j

    def softmax(x: np.ndarray, t: float) -> np.ndarray:
        c = x.shape[0]
        flat = x.reshape(c * n, d)
        a = model.scores(flat).reshape(c, n, d)
        kx, vx = model.sources(flat)
        kx, vx = kx.reshape(c, n, d), vx.reshape(c, n, d)
        s = np.matmul(a, kx.swapaxes(-1, -2))
        s += bias
        s -= s.max(axis=-1, keepdims=True)  # the diagonal k = j is always finite
        np.exp(s, out=s)
        den = s.sum(axis=-1)
        f = np.matmul(s, vx) / den[..., None]
        if model.centered:
            f -= vx
        return geo.project(x, f)

    return softmax


def causal_velocity(model: CausalInteraction | SelfAttention, x: np.ndarray) -> np.ndarray:
    """The velocities of the tokens of one prompt ``(N, d)`` or of prompts ``(P, N, d)``
    (same shape), tangent to the sphere when the model lives there.

    ``model``: a :class:`CausalInteraction` or a ``SelfAttention(..., causal=True)``.
    """
    model = _check_model(model)
    arr = check_real("x", x)
    one = arr.ndim == 2
    xs = arr[None] if one else arr
    if xs.ndim != 3 or xs.shape[-1] != model.d or xs.shape[1] < 1:
        raise ValueError(f"x must have shape (N, {model.d}) or (P, N, {model.d}), got {arr.shape}")
    _check_tokens(model, xs)
    v = _rhs(model, xs.shape[1])(np.array(xs, dtype=np.float64), 0.0)
    return v[0] if one else v


def _check_tokens(model: CausalInteraction | SelfAttention, x: np.ndarray) -> None:
    if not np.all(np.isfinite(x)):
        raise ValueError("x0 must be finite (found NaN or inf)")
    if model.sphere and x.size:
        err = float(np.max(np.abs(np.linalg.norm(x, axis=-1) - 1.0)))
        if err > 1e-8:
            raise ValueError(f"x0 must lie on the unit sphere (max | |x| - 1 | = {err:.2e})")
    elif isinstance(model, SelfAttention) and x.size:
        model.check_finite_field(float(np.max(np.linalg.norm(x, axis=-1))))


# -- memory ------------------------------------------------------------------------------------
def _chunk_size(n: int, d: int, chunk_bytes: int = CHUNK_BYTES) -> int:
    per_prompt = 8 * (3 * n * n + 14 * n * d)
    return max(1, int(chunk_bytes) // per_prompt)


def prompt_memory(
    n_tokens: int, d: int, n_save: int, n_prompts: int, *, ranks: int = 1, chunk: int | None = None
) -> int:
    """Peak bytes of :func:`simulate_prompts` / :func:`prompt_ensemble` on one rank.

    The saves of the rank's prompts (``ceil(P / ranks)`` of ``n_save x N x d``, as a list of
    chunks and stacked), all ``P`` prompts gathered on every rank and stacked (with
    ``ranks > 1`` the pickled copies add two more), the initial tokens, and the working arrays of
    one chunk: three ``N x N`` blocks and fourteen ``N x d`` arrays (RK4 stages, projections)
    per prompt.
    """
    n, d, s, p = int(n_tokens), int(d), int(n_save), int(n_prompts)
    mine = -(-p // max(1, int(ranks)))
    c = min(mine, _chunk_size(n, d) if chunk is None else int(chunk))
    one = s * n * d
    saves = 2 * mine * one + (p * one if ranks == 1 else mine * one + 3 * p * one)
    return 8 * (saves + p * n * d + c * (3 * n * n + 14 * n * d))


# -- the integrator ----------------------------------------------------------------------------
def _integrate(
    model: CausalInteraction | SelfAttention,
    n_tokens: int,
    n_prompts: int,
    draw: Callable[[list[int]], np.ndarray],
    t_final: float,
    *,
    dt: float,
    save_times: Sequence[float] | None,
    method: RK4 | Euler,
    comm: Any,
    chunk: int | None,
    what: str,
    extra_stats: dict[str, Any],
) -> EnsembleSolution:
    """Integrate ``n_prompts`` prompts; ``draw(indices)`` gives the initial tokens
    ``(len(indices), N, d)`` of the listed prompts (called per chunk, on the owning rank)."""
    if not isinstance(method, (RK4, Euler)):
        raise TypeError(f"method must be RK4() or Euler(), got {method!r}")
    dt = check_dt(dt)
    grid = time_grid(t_final, save_times)
    if chunk is not None:
        chunk = check_int("chunk_prompts", chunk, 1)
    n, d, ts = int(n_tokens), int(model.d), grid.save_times
    rank, size = (comm.rank, comm.size) if comm is not None else (0, 1)
    check_steps(grid.t_final, dt, what)
    need = prompt_memory(n, d, ts.size, n_prompts, ranks=size, chunk=chunk)
    budget = memory_budget(ranks=size)
    if comm is not None:
        budget = comm.bcast(budget, root=0)
    check_memory(
        f"{what}: {n_prompts} prompts of {n} tokens in d={d} with {ts.size} saves", need, budget
    )

    mine = list(range(rank, n_prompts, size))
    c = min(max(1, len(mine)), _chunk_size(n, d) if chunk is None else chunk)
    f = _rhs(model, n)
    geo = model.geometry
    start = time.perf_counter()
    state: dict[str, Any] = {}
    steps = 0
    parts: list[np.ndarray] = []
    status = np.zeros(len(mine), dtype=bool)  # True: non-finite

    def advance(t: float, h: float, k: int) -> None:
        state["x"] = geo.retract(method.step(f, state["x"], t, h))

    def record(j: int) -> bool:
        state["saved"][:, j] = state["x"]
        return True

    for lo in range(0, len(mine), c):
        idx = mine[lo : lo + c]
        x = np.array(draw(idx), dtype=np.float64)
        _check_tokens(model, x)
        state["x"] = x
        state["saved"] = np.empty((len(idx), ts.size, n, d))
        steps = march(grid, dt, advance, record)
        bad = ~np.all(np.isfinite(state["saved"]), axis=(1, 2, 3))
        status[lo : lo + len(idx)] = bad
        parts.append(state["saved"])
    local = np.concatenate(parts) if parts else np.zeros((0, ts.size, n, d))
    if comm is None:
        x_all, bad_all = local, status
    else:
        gathered = comm.allgather((mine, local, status))
        x_all = np.empty((n_prompts, ts.size, n, d))
        bad_all = np.zeros(n_prompts, dtype=bool)
        for ids, arr, st in gathered:
            x_all[ids] = arr
            bad_all[ids] = st
        steps = max(comm.allgather(steps))
    wall = time.perf_counter() - start
    if rank == 0 and np.any(bad_all):
        logger.warning("%s: %d prompt(s) reached non-finite positions", what, int(bad_all.sum()))
    if rank == 0:
        logger.info(
            "%s: %d prompts of %d tokens, %d steps on %d rank(s) in %.3g s",
            what,
            n_prompts,
            n,
            steps,
            size,
            wall,
        )
    stats = {
        "steps": int(steps),
        "rhs_evaluations": int(steps) * method.stages,
        "wall_time": wall,
        "dt": dt,
        "method": type(method).__name__,
        "ranks": size,
        "chunk_prompts": int(c),
        "model": "interaction" if isinstance(model, CausalInteraction) else "softmax",
        "memory_estimate": format_bytes(need),
        **extra_stats,
    }
    run_status = tuple(Status.NONFINITE if b else Status.SUCCESS for b in bad_all)
    return EnsembleSolution(
        t=ts.copy(), x=x_all, weights=np.full(n, 1.0 / n), run_status=run_status, stats=stats
    )


def simulate_prompts(
    model: CausalInteraction | SelfAttention,
    x0: np.ndarray,
    t_final: float,
    *,
    dt: float,
    save_times: Sequence[float] | None = None,
    method: RK4 | Euler = RK4(),
    comm: Any = None,
    chunk_prompts: int | None = None,
) -> EnsembleSolution:
    """Integrate ``P`` prompts of a causal model from the given initial tokens.

    Parameters
    ----------
    model : a :class:`CausalInteraction` or a ``SelfAttention(..., causal=True, alibi=lam)``.
    x0 : (P, N, d) initial tokens of every prompt, in prompt order (on the unit sphere when
        the model lives there), the same on every rank.
    t_final, dt, save_times, method : as for :func:`attnflow.simulate` (the event grid hits
        every save time exactly; RK4 or Euler, then the retraction on the sphere).
    comm : an ``mpi4py`` communicator: the prompts are dealt round-robin to its ranks.
    chunk_prompts : prompts integrated together (default: as many as fit in
        :data:`CHUNK_BYTES`); the results do not depend on it.

    Returns
    -------
    :class:`~attnflow.solutions.EnsembleSolution` with ``x`` (P, n_saved, N, d), one run per
    prompt, identical (bitwise) on every rank and for any number of ranks; a prompt whose
    tokens became non-finite has the status ``NONFINITE``. ``stats``: ``steps``,
    ``rhs_evaluations`` (per prompt), ``wall_time``, ``dt``, ``method``, ``ranks``,
    ``chunk_prompts``, ``model`` (``"interaction"`` or ``"softmax"``), ``memory_estimate``.
    """
    model = _check_model(model)
    arr = check_real("x0", x0)
    if arr.ndim != 3 or arr.shape[-1] != model.d or arr.shape[0] < 1 or arr.shape[1] < 1:
        raise ValueError(f"x0 must have shape (P, N, {model.d}) with P, N >= 1, got {arr.shape}")
    _check_tokens(model, arr)
    return _integrate(
        model,
        arr.shape[1],
        arr.shape[0],
        lambda idx: arr[idx],
        t_final,
        dt=dt,
        save_times=save_times,
        method=method,
        comm=comm,
        chunk=chunk_prompts,
        what="simulate_prompts",
        extra_stats={},
    )


def prompt_ensemble(
    model: CausalInteraction | SelfAttention,
    n_tokens: int,
    n_prompts: int,
    t_final: float,
    *,
    dt: float,
    seed: int,
    law: Law | None = None,
    save_times: Sequence[float] | None = None,
    method: RK4 | Euler = RK4(),
    comm: Any = None,
    chunk_prompts: int | None = None,
) -> EnsembleSolution:
    """Integrate ``n_prompts`` iid prompts of ``n_tokens`` tokens drawn from ``law``.

    Prompt ``r`` draws its tokens (in prompt order) with
    ``law.sample(n_tokens, default_rng(SeedSequence(seed).spawn(n_prompts)[r]))`` on the rank
    that owns it, exactly as run ``r`` of :func:`attnflow.ensemble`; ``law`` defaults to the
    uniform law on the sphere (:class:`attnflow.UniformSphere`). The other arguments and the
    result are those of :func:`simulate_prompts` (``stats`` also holds ``seed``).
    """
    model = _check_model(model)
    n_tokens = check_int("n_tokens", n_tokens, 1)
    n_prompts = check_int("n_prompts", n_prompts, 1)
    seed = check_int("seed", seed, 0)
    law = UniformSphere(model.d) if law is None else law
    if not isinstance(law, Law):
        raise TypeError(f"law must be a Law, got {type(law).__name__}")
    if law.d != model.d or bool(law.on_sphere) != bool(model.sphere):
        raise ValueError("law must live where the model's tokens live (same d, sphere or R^d)")

    def draw(idx: list[int]) -> np.ndarray:
        out = np.empty((len(idx), n_tokens, model.d))
        for i, r in enumerate(idx):
            # SeedSequence(seed).spawn(n_prompts)[r], made alone (no list of n_prompts seeds)
            seq = np.random.SeedSequence(seed, spawn_key=(r,))
            out[i] = law.sample(n_tokens, np.random.default_rng(seq))
        return out

    return _integrate(
        model,
        n_tokens,
        n_prompts,
        draw,
        t_final,
        dt=dt,
        save_times=save_times,
        method=method,
        comm=comm,
        chunk=chunk_prompts,
        what="prompt_ensemble",
        extra_stats={"seed": seed},
    )


# -- the routes of attnflow.simulate and attnflow.ensemble ------------------------------------
def _refuse_options(what: str, options: dict[str, Any]) -> None:
    for name, value, default in (
        ("weights", options.get("weights"), None),
        ("checkpoint_every", options.get("checkpoint_every", 0), 0),
        ("restart", options.get("restart"), None),
        ("progress", options.get("progress"), None),
    ):
        if value is not default and not (default == 0 and value == 0):
            raise ValueError(
                f"{name}: not supported for a causal model in {what}; use "
                "attnflow.causal.simulate_prompts / prompt_ensemble"
            )
    if options.get("kernel", "auto") not in ("auto", "recomputed"):
        raise ValueError(
            f"kernel: a causal model has no kernel choice in {what} (got "
            f"{options.get('kernel')!r}); use 'auto'"
        )


def simulate_causal(
    model: CausalInteraction | SelfAttention,
    x0: np.ndarray,
    t_final: float,
    *,
    dt: float,
    save_times: Sequence[float] | None = None,
    method: RK4 | Euler = RK4(),
    comm: Any = None,
    **options: Any,
) -> Solution:
    """:func:`attnflow.simulate` of a causal model: one prompt, tokens ``x0`` (N, d) in the
    given order (:func:`simulate_prompts` with ``P = 1``; under MPI rank 0 integrates it).

    ``weights``, ``checkpoint_every``, ``restart``, ``progress`` and kernel choices are refused
    (``ValueError``). Returns a :class:`~attnflow.solutions.Solution`.
    """
    _refuse_options("attnflow.simulate", options)
    model = _check_model(model)
    arr = check_real("x0", x0)
    if arr.ndim != 2 or arr.shape[1] != model.d:
        raise ValueError(f"x0 must have shape (N, {model.d}), got {arr.shape}")
    sol = simulate_prompts(
        model, arr[None], t_final, dt=dt, save_times=save_times, method=method, comm=comm
    )
    return sol.run(0)


def ensemble_causal(
    model: CausalInteraction | SelfAttention,
    law: Law,
    n_particles: int,
    n_runs: int,
    t_final: float,
    *,
    dt: float,
    seed: int,
    save_times: Sequence[float] | None = None,
    method: RK4 | Euler = RK4(),
    comm: Any = None,
    **options: Any,
) -> EnsembleSolution:
    """:func:`attnflow.ensemble` of a causal model: :func:`prompt_ensemble` (run ``r`` draws
    from ``SeedSequence(seed).spawn(n_runs)[r]`` as there). Checkpoints, restarts, progress
    and kernel choices are refused (``ValueError``)."""
    _refuse_options("attnflow.ensemble", options)
    return prompt_ensemble(
        model,
        n_particles,
        n_runs,
        t_final,
        dt=dt,
        seed=seed,
        law=law,
        save_times=save_times,
        method=method,
        comm=comm,
    )


# -- Monte Carlo of the retrieval correlation --------------------------------------------------
@dataclass(frozen=True)
class CorrelationEstimate:
    """Monte Carlo estimate of ``C_n(t, s_k) = N E[Re e^{-i n theta_N(t)} e^{i n theta_k(0)}]``.

    Attributes
    ----------
    t : (n_t,) times.
    positions : (K,) 1-based token positions ``k``; ``s`` (K,) their positions ``k / N``.
    value : (n_t, K) the estimate; ``stderr`` (n_t, K) its standard error.
    n_prompts, n_tokens, n : sample size, tokens per prompt, Fourier mode.
    """

    t: np.ndarray
    positions: np.ndarray
    s: np.ndarray
    value: np.ndarray
    stderr: np.ndarray
    n_prompts: int
    n_tokens: int
    n: int


def correlation_mc(
    sol: EnsembleSolution | np.ndarray,
    n: int,
    positions: Sequence[int] | None = None,
    *,
    t: Sequence[float] | None = None,
    control_variate: bool = True,
) -> CorrelationEstimate:
    """Monte Carlo estimate of the retrieval correlation on ``S^1``.

    ``C_n(t, s_k) = N E[Re(e^{-i n theta_N(t)} e^{i n theta_k(0)})]``, the correlation between
    the last token at time ``t`` and token ``k`` (position ``s_k = k/N``) of the initial prompt,
    averaged over iid prompts (for iid uniform tokens its limit ``N -> infinity`` is
    :func:`attnflow.causal.theory.correlation_kernel`).

    Parameters
    ----------
    sol : an :class:`~attnflow.solutions.EnsembleSolution` on ``S^1`` whose first save time
        is 0 (e.g. :func:`prompt_ensemble`), or an array (P, n_saved, N, 2) of unit vectors
        whose save 0 is the initial prompt (then ``t`` gives the save times; default their
        indices).
    n : Fourier mode ``>= 1``.
    positions : 1-based token positions ``k`` in ``1..N`` (default all).
    control_variate : subtract ``N Re(e^{-i n theta_N(0)} e^{i n theta_k(0)})``, whose mean is
        known exactly for iid uniform tokens (``0`` for ``k < N``, ``N`` for ``k = N``), and add
        that mean back: unbiased for iid uniform initial tokens, with a variance smaller by
        about ``(n |theta_N(t) - theta_N(0)|)^2``. With ``False`` the plain sample mean (for any
        initial law).

    Returns
    -------
    :class:`CorrelationEstimate` with the values and standard errors
    (``N std / sqrt(P)``, sample standard deviation) at every save time and position.
    """
    if isinstance(sol, EnsembleSolution):
        x = np.asarray(sol.x)
        times = np.asarray(sol.t, dtype=float)
        if times.size == 0 or times[0] != 0.0:
            raise ValueError("sol must have 0 as its first save time (the initial prompt)")
    else:
        x = check_real("sol", sol)
        times = None
    if x.ndim != 4 or x.shape[-1] != 2 or x.shape[0] < 2:
        raise ValueError(
            f"sol must hold tokens on S^1 of shape (P, n_saved, N, 2) with P >= 2, got {x.shape}"
        )
    p, n_saved, n_tok, _ = x.shape
    if times is None:
        times = np.arange(n_saved, dtype=float) if t is None else check_real("t", t).ravel()
        if times.shape != (n_saved,):
            raise ValueError(f"t must have shape ({n_saved},), got {times.shape}")
    elif t is not None:
        raise ValueError("t must be None when sol is an EnsembleSolution (it has its times)")
    mode = check_int("n", n, 1)
    ks = np.arange(1, n_tok + 1) if positions is None else np.asarray(positions)
    if (
        ks.ndim != 1
        or ks.size == 0
        or not np.issubdtype(ks.dtype, np.integer)
        or np.any(ks < 1)
        or np.any(ks > n_tok)
    ):
        raise ValueError(
            f"positions must be a non-empty list of ints in 1..{n_tok}, got {positions!r}"
        )
    if not np.all(np.isfinite(x)):
        raise ValueError("sol must be finite (a prompt has non-finite tokens)")
    theta = np.arctan2(x[..., 1], x[..., 0])  # (P, n_saved, N)
    last = np.exp(-1j * mode * theta[:, :, -1])  # (P, n_saved)
    first = np.exp(1j * mode * theta[:, 0, ks - 1])  # (P, K)
    sample = n_tok * np.real(last[:, :, None] * first[:, None, :])  # (P, n_saved, K)
    mean_shift = np.zeros(ks.size)
    if control_variate:
        sample = sample - sample[:, :1, :]  # minus its value at t = 0 ...
        mean_shift = np.where(ks == n_tok, float(n_tok), 0.0)  # ... whose mean is known
    value = sample.mean(axis=0) + mean_shift
    stderr = sample.std(axis=0, ddof=1) / math.sqrt(p)
    return CorrelationEstimate(
        t=times,
        positions=ks.astype(np.int64),
        s=ks / n_tok,
        value=value,
        stderr=stderr,
        n_prompts=int(p),
        n_tokens=int(n_tok),
        n=mode,
    )
