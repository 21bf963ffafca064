"""The machinery of the paper recipes (``recipes/<paper>/<experiment>/*.yaml``, run by ``recipes/run.py``).

* :mod:`~lightning_sqn.recipes.config`: finding and loading configs, presets, groups and runs;
* :mod:`~lightning_sqn.recipes.fit`: one LightningCLI call per run and seed, with the runner's additions.

Reports of the runs: :func:`lightning_sqn.report.build_report`.
"""

from lightning_sqn.recipes.config import (
    PRESETS,
    RunSpec,
    all_configs,
    config_name,
    deep_merge,
    expand,
    find_configs,
    load_config,
    seeds_of,
    select,
)
from lightning_sqn.recipes.fit import (
    fit_one,
    import_class,
    instantiate,
    lightning_config,
    monitors,
    needs_closure,
    optimizer_of,
    reads_files,
    strategy_for,
)

__all__ = [
    "PRESETS",
    "RunSpec",
    "all_configs",
    "config_name",
    "deep_merge",
    "expand",
    "find_configs",
    "fit_one",
    "import_class",
    "instantiate",
    "lightning_config",
    "load_config",
    "monitors",
    "needs_closure",
    "optimizer_of",
    "reads_files",
    "seeds_of",
    "select",
    "strategy_for",
]
