"""The dynamics of a configuration: ``[model]``, ``[[terms]]`` and ``[[controls]]``.

:func:`parse_model` validates the attention head of ``[model]`` (``attention = "none"``: no
head there), the further terms (``[[terms]]``: attention heads, which form a
:class:`attnflow.MultiHead` with the optional ``model.output`` matrix, and perceptrons,
:class:`attnflow.Perceptron`) and the piecewise-constant controls (``[[controls]]``: width-one
fields ``w s(a . x + b)`` switched at their ``start`` times, an :class:`attnflow.Piecewise`)
and the keys of noise (``noise``: an :class:`attnflow.Diffusion` term) and causal attention
(``causal``, ``alibi``, ``form``; :func:`_causal`) into one
:class:`~attnflow.app.config.schema.ModelSection`. Every problem is one
:class:`~attnflow.app.config.values.ConfigError` line naming the key, e.g.
``terms[2].A: must have shape (m, d) = (3, 2), got (2, 2)``. :func:`check_model_times` checks
the controls' start times against ``time.t_final`` and infinite ``beta`` (hardmax) against the
finite element solver.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from attnflow.app.config.schema import (
    ARRAYS,
    ATTENTIONS,
    CAUSAL_FORMS,
    INTERACTION_KEYS,
    SECTIONS,
    TERM_KEYS,
    AttentionTerm,
    Control,
    ModelSection,
    PerceptronTerm,
)
from attnflow.app.config.values import (
    ConfigError,
    Table,
    check_array,
    check_bool,
    check_choice,
    check_float,
    check_int,
    check_matrix,
    check_vector,
    choices,
    is_number,
    show,
)
from attnflow.perceptron import ACTIVATIONS

__all__ = ["check_model_times", "parse_model"]


def _items(raw: Mapping[str, Any], name: str) -> list[Table]:
    """The tables of the array ``[[name]]``, each a :class:`Table` named ``name[i]``."""
    value = raw.get(name, [])
    if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
        raise ConfigError(name, f"must be an array of tables ([[{name}]]), got {show(value)}")
    return [Table({f"{name}[{i}]": v}, f"{name}[{i}]", ARRAYS[name]) for i, v in enumerate(value)]


def _beta(t: Table) -> float:
    v = t.get("beta", 1.0)
    if not is_number(v) or math.isnan(float(v)) or not float(v) > 0:
        raise ConfigError(t.key("beta"), f"must be > 0, got {show(v)}")
    return float(v)


def _head(t: Table, d: int, attentions: tuple[str, ...]) -> dict[str, Any]:
    """The keys of an attention head (``[model]`` or an attention term), checked."""
    beta = _beta(t)
    attention = check_choice(t.key("attention"), t.get("attention", "SA"), attentions)
    if math.isinf(beta) and attention == "USA":
        raise ConfigError(t.key("beta"), 'must be finite for attention = "USA" (hardmax is SA)')
    mats = {k: check_matrix(t.key(k), t.get(k, "identity"), d, allow_identity=True) for k in "QKV"}
    rescale = check_bool(t.key("rescale_usa"), t.get("rescale_usa", False))
    if rescale and attention != "USA":
        raise ConfigError(t.key("rescale_usa"), 'applies to attention = "USA" only')
    centered = check_bool(t.key("centered"), t.get("centered", False))
    return dict(beta=beta, attention=attention, rescale_usa=rescale, centered=centered, **mats)


def _perceptron(t: Table, d: int) -> PerceptronTerm:
    W = check_array(t.key("W"), t.get("W", hint="a (d, m) array"), (d, None), "(d, m)")
    m = len(W[0])
    A = check_array(t.key("A"), t.get("A", hint="an (m, d) array"), (m, d), "(m, d)")
    b = check_array(t.key("b"), t.get("b", hint="a list of m numbers"), (m,), "(m,)")
    act = check_choice(t.key("activation"), t.get("activation", "relu"), ACTIVATIONS)
    return PerceptronTerm(W, A, b, act)


def _terms(raw: Mapping[str, Any], d: int) -> tuple[AttentionTerm | PerceptronTerm, ...]:
    out: list[AttentionTerm | PerceptronTerm] = []
    for t in _items(raw, "terms"):
        kind = check_choice(t.key("type"), t.get("type", hint=choices(TERM_KEYS)), TERM_KEYS)
        t.only(("type", *TERM_KEYS[kind]), f'by type = "{kind}"')
        if kind == "perceptron":
            out.append(_perceptron(t, d))
        else:
            out.append(AttentionTerm(**_head(t, d, ("SA", "USA"))))
    return tuple(out)


def _controls(raw: Mapping[str, Any], d: int) -> tuple[Control, ...]:
    out: list[Control] = []
    for i, t in enumerate(_items(raw, "controls")):
        start = check_float(t.key("start"), t.get("start", hint="the time it acts from"), ge=0)
        if i == 0 and start != 0:
            raise ConfigError(
                t.key("start"), f"must be 0 (the first control acts from t = 0), got {show(start)}"
            )
        if i > 0 and not start > out[-1].start:
            raise ConfigError(
                t.key("start"),
                f"must be > controls[{i - 1}].start = {out[-1].start:g} (increasing), got "
                f"{show(start)}",
            )
        out.append(
            Control(
                start,
                check_vector(t.key("w"), t.get("w"), d),
                check_vector(t.key("a"), t.get("a"), d),
                check_float(t.key("b"), t.get("b", 0.0)),
                check_choice(t.key("activation"), t.get("activation", "relu"), ACTIVATIONS),
            )
        )
    return tuple(out)


def _causal(t: Table, raw: Mapping[str, Any]) -> dict[str, Any]:
    """The causal keys of ``[model]`` (``causal``, ``alibi``, ``form``), checked against the
    rest: ``alibi`` and ``form`` need ``causal = true``; a causal model is one head (no
    ``[[terms]]``, ``[[controls]]``, ``output``), without noise, with a finite ``beta``;
    ``form = "softmax"`` needs ``attention = "SA"`` (:class:`attnflow.SelfAttention` with
    ``causal=True``: softmax over the tokens ``k <= j``), ``form = "interaction"``
    (:class:`attnflow.causal.CausalInteraction`, ``Q = K = V = I``) takes only the keys
    :data:`INTERACTION_KEYS` and tokens on the sphere."""
    causal = check_bool(t.key("causal"), t.get("causal", False))
    if not causal:
        for k in ("alibi", "form"):
            if t.has(k):
                raise ConfigError(t.key(k), "needs model.causal = true (causal attention)")
        return {}
    alibi = check_float(t.key("alibi"), t.get("alibi", 0.0), ge=0)
    form = check_choice(t.key("form"), t.get("form", "softmax"), CAUSAL_FORMS)
    why = "a causal model is one attention head (the causal solvers run one causal model)"
    if t.get("attention", "SA") == "none":
        raise ConfigError(
            t.key("causal"), f'needs an attention head, not attention = "none" ({why})'
        )
    for name in ("terms", "controls"):
        if raw.get(name):
            raise ConfigError(name, f"not allowed with model.causal = true ({why})")
    if t.has("output"):
        raise ConfigError(t.key("output"), f"not allowed with model.causal = true ({why})")
    if t.has("noise") and t.get("noise") != 0:
        raise ConfigError(
            t.key("noise"), "must be 0 with model.causal = true (the causal solvers have no noise)"
        )
    if form == "interaction":
        t.only(INTERACTION_KEYS, 'with model.form = "interaction" (Q = K = V = I, unnormalised)')
        if t.get("space", "sphere") != "sphere":
            raise ConfigError(
                t.key("space"), 'must be "sphere" with model.form = "interaction" (S^(d-1))'
            )
    elif t.get("attention", "SA") != "SA":
        raise ConfigError(
            t.key("attention"),
            f'must be "SA" with model.causal = true and form = "softmax" (causal softmax '
            f'attention), got {show(t.get("attention"))}; form = "interaction" is the '
            "unnormalised causal model",
        )
    return {"causal": True, "alibi": alibi, "form": form}


def parse_model(raw: Mapping[str, Any]) -> ModelSection:
    """``[model]``, ``[[terms]]`` and ``[[controls]]`` of a raw configuration, checked (and
    built once: anything the library objects reject is reported too)."""
    from attnflow.app import build

    t = Table(raw, "model", SECTIONS["model"])
    space = check_choice(t.key("space"), t.get("space", "sphere"), ("sphere", "euclidean"))
    d = check_int(t.key("d"), t.get("d", hint="the dimension of the ambient space"), 1, 64)
    if space == "sphere" and d < 2:
        raise ConfigError(t.key("d"), f"must be >= 2 on the sphere (S^(d-1)), got {d}")
    causal = _causal(t, raw)
    noise = check_float(t.key("noise"), t.get("noise", 0.0), ge=0)
    if causal.get("form") == "interaction":
        beta = _beta(t)
        if math.isinf(beta):
            raise ConfigError(t.key("beta"), "must be finite with model.causal = true")
        rescale = check_bool(t.key("rescale_usa"), t.get("rescale_usa", False))
        head: dict[str, Any] = {"beta": beta, "attention": "USA", "rescale_usa": rescale}
    elif t.get("attention", "SA") == "none":
        t.only(("d", "space", "attention", "output", "noise"), 'with model.attention = "none"')
        head = {"attention": "none"}
    else:
        head = _head(t, d, ATTENTIONS)
        if causal and math.isinf(head["beta"]):
            raise ConfigError(t.key("beta"), "must be finite with model.causal = true")
    output = None
    if t.has("output"):
        output = check_matrix(t.key("output"), t.get("output"), d, allow_identity=True)
        output = output or tuple(tuple(float(i == j) for j in range(d)) for i in range(d))
    terms, controls = _terms(raw, d), _controls(raw, d)
    m = ModelSection(
        d, space=space, output=output, terms=terms, controls=controls, noise=noise, **causal, **head
    )
    if output is not None and not m.heads():
        raise ConfigError(t.key("output"), "needs an attention head ([model] or [[terms]])")
    if not m.heads() and not terms and not controls:
        raise ConfigError(
            t.key("attention"), '"none" needs [[terms]] or [[controls]] (the dynamics is empty)'
        )
    try:
        build.build_model(m)
    except (TypeError, ValueError) as e:  # anything the model itself rejects
        if m.interaction and "beta" in str(e):  # CausalInteraction: beta e^beta overflows
            msg = str(e).replace("rescale=True", "model.rescale_usa = true")
            raise ConfigError(t.key("beta"), msg) from None
        raise ConfigError("model", str(e)) from None
    return m


def check_model_times(model: ModelSection, t_final: float, fem: bool) -> None:
    """Refuse a control that starts at or after ``t_final`` (it never acts) and, with the
    finite element solver, a hardmax head (``beta = inf``)."""
    for i, c in enumerate(model.controls):
        if i > 0 and not c.start < t_final:
            raise ConfigError(
                f"controls[{i}].start",
                f"must be < time.t_final = {t_final:g} (it would never act), got {c.start:g}",
            )
    for prefix, h in model.heads() if fem else ():
        if math.isinf(h.beta):
            raise ConfigError(
                f"{prefix}.beta",
                "must be finite for the finite element solver (inf, hardmax, is for "
                'particles: run.solvers = ["particles"])',
            )
