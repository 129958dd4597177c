"""Run configurations: a TOML file, validated strictly, resolved and written back.

A configuration describes one run of ``attnflow run``: the model (with further terms and
controls), the mesh and the initial density, the times, which solvers to run (finite elements,
particles or both, then compared), the output, checkpoints (and, for ``attnflow sweep``, the
parameter to vary). The schema is documented in ``docs/config.md``. The modules, by idea:

* :mod:`~attnflow.app.config.schema`: the sections and :class:`Config` (plain data);
* :mod:`~attnflow.app.config.parse`: :func:`load_config`, :func:`parse_config`, overrides;
* :mod:`~attnflow.app.config.terms`: the dynamics: ``[model]``, ``[[terms]]`` (attention heads,
  perceptrons) and ``[[controls]]`` (piecewise-constant controls);
* :mod:`~attnflow.app.config.values`: :class:`ConfigError` and the checks of single values;
* :mod:`~attnflow.app.config.tomlio`: :func:`read_toml`, :func:`dumps_toml`;
* :mod:`~attnflow.app.config.expressions`: the expression language of initial densities;
* :mod:`~attnflow.app.config.density`: the checks of an initial density.

These modules need numpy (and scipy for the laws) only, not dolfinx.
"""

from attnflow.app.config.expressions import compile_expression
from attnflow.app.config.parse import apply_override, load_config, parse_config, parse_override
from attnflow.app.config.schema import (
    AttentionTerm,
    CheckpointSection,
    CompareSection,
    Config,
    Control,
    FemSection,
    InitialSection,
    MeshSection,
    ModelSection,
    OutputSection,
    ParticlesSection,
    PerceptronTerm,
    RunSection,
    SweepSection,
    TimeSection,
)
from attnflow.app.config.tomlio import dumps_toml, read_toml
from attnflow.app.config.values import ConfigError

__all__ = [
    "AttentionTerm",
    "CheckpointSection",
    "CompareSection",
    "Config",
    "ConfigError",
    "Control",
    "FemSection",
    "InitialSection",
    "MeshSection",
    "ModelSection",
    "OutputSection",
    "ParticlesSection",
    "PerceptronTerm",
    "RunSection",
    "SweepSection",
    "TimeSection",
    "apply_override",
    "compile_expression",
    "dumps_toml",
    "load_config",
    "parse_config",
    "parse_override",
    "read_toml",
]
