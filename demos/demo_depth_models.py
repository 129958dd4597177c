# # Discrete-depth models: random multi-head layers and hardmax layers
#
# **(1) Random multi-head layers** (Koubbi–Geshkovski–Rigollet): tokens on $S^{d-1}$,
# $x_i \leftarrow \mathrm{N}\big(x_i + \eta \sum_{h \le H} V_h\, m_h(x_i)\big)$ with
# $m_h(x_i) = \sum_j \mathrm{softmax}_j(\beta \langle Q_h x_i, K_h x_j\rangle) x_j$ and all
# weights iid $\mathcal N(0, \sigma^2/d)$, resampled at every layer and head. In the time
# $t = \ell\,\eta^2 H \sigma^2$ and as $\eta \to 0$ the tokens solve the SDE with common noise
#
# $$ dx_i = P_{x_i} dM_i - \tfrac{d-1}{2d} C_{ii}(x)\, x_i\, dt, \qquad
#    d\langle M_i^a, M_k^b\rangle = \delta_{ab}\, C_{ik}(x)\, dt / d, \qquad
#    C_{ik} = \mathbb E_{Q,K}\langle m(x_i), m(x_k)\rangle $$
#
# (no attention drift: only the normalisation's Itô term). The mean cosine similarity
# $\bar\rho(t)$ grows (representation collapse); discrete model and SDE agree with error bars,
# and at $\beta = 0$ two tokens follow the closed SDE
# $d\rho = (1-\rho^2)(d-2-\rho)/(2d)\,dt + (1-\rho^2)/\sqrt d\, dB$.
#
# **(2) Hardmax layers** (Alcalde–Fantuzzi–Zuazua):
# $z_i \leftarrow (z_i + \alpha\, \mathrm{mean}_{j \in C_i} z_j)/(1+\alpha)$,
# $C_i = \mathrm{argmax}_j \langle A z_i, z_j\rangle$: in 2-D the tokens travel to the leaders
# (vertices of a polytope); a token tied between two vertices ends at their midpoint.

# +
from __future__ import annotations

import argparse
import logging
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

import attnflow as af
from attnflow import layers
from attnflow.app.style import add_format_argument, figsize, save_figure, use_style

parser = argparse.ArgumentParser(description="Random multi-head and hardmax layers.")
parser.add_argument("--output", type=Path, default=Path(__file__).parent / "output" / "depth")
parser.add_argument("--small", action="store_true", help="small sizes (CI)")
add_format_argument(parser)
args = parser.parse_args()
use_style()
args.output.mkdir(parents=True, exist_ok=True)
logging.basicConfig(level=logging.INFO)
log = logging.getLogger("demo_depth_models")
# -

# ## (1) Collapse: discrete random layers vs the homogenized SDE
#
# Four tokens, mean cosine similarity against the homogenized time; the discrete model with
# $\eta^2 H \sigma^2 = 0.01$ per layer, the SDE with $dt = 0.02$. Error bars: 1 standard error.

# +
n_runs = 150 if args.small else 1500
t_final = 1.0 if args.small else 3.0
rng = np.random.default_rng(0)
cases = [(3, 1, 0.0), (3, 4, 0.0), (3, 1, 4.0), (8, 1, 0.0), (8, 4, 4.0)]
if args.small:
    cases = cases[:3]
fig, axes = plt.subplots(1, len(cases), figsize=figsize("page", 0.95 / len(cases)), sharey=True)
rows = []
for ax, (d, H, beta) in zip(axes, cases, strict=True):
    x0 = rng.standard_normal((4, d))
    x0 /= np.linalg.norm(x0, axis=1, keepdims=True)
    eta = math.sqrt(0.01 / H)
    n_layers = round(t_final / 0.01)
    dis = layers.random_head_layers(
        x0,
        n_layers,
        eta,
        layers.GaussianHeads(d, H),
        beta,
        n_runs=n_runs,
        seed=1,
        record=max(1, n_layers // 10),
    )
    sde = layers.homogenized_sde(
        x0,
        t_final,
        0.02,
        beta,
        n_runs=n_runs,
        seed=2,
        n_features=4,
        record=max(1, n_layers // 20),
    )
    for sol, label, fmt in ((dis, "discrete", "o-"), (sde, "SDE", "s--")):
        r = sol.mean_cosine()
        se = r.std(0) / math.sqrt(n_runs)
        ax.errorbar(sol.times, r.mean(0), se, fmt=fmt, ms=3, label=label, capsize=2)
    a, b = dis.mean_cosine()[:, -1], sde.mean_cosine()[:, -1]
    se = math.hypot(a.std(), b.std()) / math.sqrt(n_runs)
    rows.append((d, H, beta, a.mean(), b.mean(), se))
    log.info(
        "d=%d H=%d beta=%g: rho(t=%g) discrete %.4f, SDE %.4f, se %.4f",
        d,
        H,
        beta,
        t_final,
        a.mean(),
        b.mean(),
        se,
    )
    # 4 standard errors: several cases are checked at once
    assert abs(a.mean() - b.mean()) < 4 * se
    ax.set(
        title=rf"$d={d}$, $H={H}$, $\beta={beta:g}$", xlabel=r"time $t$ = layer $\eta^2 H\sigma^2$"
    )
axes[0].set_ylabel(r"mean cosine $\rho(t)$")
axes[0].legend()
save_figure(fig, args.output / "depth_collapse", args.format)
# -

# ## (2) Hardmax layers in 2-D: leaders and a tie

# +
square = np.array([[1.0, 1.0], [1.0, -1.0], [-1.0, 1.0], [-1.0, -1.0]])
inner = np.random.default_rng(3).uniform(-0.9, 0.9, (40 if args.small else 120, 2))
z0 = np.vstack([square, [[0.3, 0.0]], inner])  # token 4 is tied between (1, 1) and (1, -1)
alpha, n_layers = 0.5, 60
sol = layers.hardmax_layers(z0, n_layers, alpha)
assert sorted(sol.leaders.tolist()) == [0, 1, 2, 3]
assert abs(sol.final[4, 0] - 1) < 1e-10 and sol.final[4, 1] == 0.0
centres = sol.stats["centres"]
dist = np.linalg.norm(sol.final[:, None] - centres[None], axis=2).min(axis=1)
assert dist.max() < 1e-10
log.info("hardmax: %d leaders, %d clusters: %s", sol.leaders.size, len(centres), centres)
fig, ax = plt.subplots(figsize=figsize("column", 1.0))
for i in range(z0.shape[0]):
    ax.plot(sol.points[:, i, 0], sol.points[:, i, 1], "-", lw=0.6, color="0.6")
ax.plot(z0[:, 0], z0[:, 1], ".", color="C0", label="input")
ax.plot(centres[:, 0], centres[:, 1], "o", mfc="none", color="C3", ms=10, label="clusters")
ax.plot(*z0[4], "s", color="C2", ms=7, label="tied token", zorder=3)
ax.set(aspect="equal", title=rf"hardmax layers, $\alpha={alpha}$", xlabel="$z_1$", ylabel="$z_2$")
fig.legend(loc="outside lower center", ncols=3)
save_figure(fig, args.output / "depth_hardmax", args.format)
af.io.write_point_cloud_series(
    args.output, sol.layers.astype(float), sol.points, name="hardmax_tokens"
)
# -

# The run's table (discrete vs SDE at the final time):

for d, H, beta, a, b, se in rows:
    log.info("| %d | %d | %g | %.4f | %.4f | %.4f |", d, H, beta, a, b, se)
