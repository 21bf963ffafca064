"""Recipe configs: one YAML file per paper experiment, in LightningCLI's format plus runs, groups, presets.

A recipe lives at ``<recipes root>/<paper>/<experiment>/config.yaml`` (or ``<experiment>/<stem>.yaml``
when an experiment has several configs) and is named ``<paper>/<experiment>[/<stem>]``. Its keys:

* LightningCLI's own: ``model`` (a :class:`~lightning_sqn.problems.task.TrainingTask` by ``class_path``,
  with the network and the optimizer among its ``init_args``, by ``class_path`` too), ``data`` (a
  DataModule by ``class_path``), ``trainer``;
* the runner's: ``description``, ``seeds``, ``groups`` (one panel of a figure each), ``runs`` (one curve
  each), ``report`` (title, targets, the paper's values), ``presets`` (``smoke``, ``cpu``, ``paper``)
  and ``stop_below`` (end a run at the first test error below it).

A run's settings are the top-level ones, then its group's, then its own, each merged into the previous
(mappings recursively, any other value replaces); a preset is merged into the whole file before that and
may only name groups and runs the file defines; a preset that sets a group or run to ``null`` drops it
(e.g. the ``cpu`` preset of a learning-rate grid keeps a smaller grid).
"""

from __future__ import annotations

import copy
import fnmatch
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

PRESETS = ("smoke", "cpu", "paper")
#: LightningCLI's sections and the runner's per-run keys: what a group, a run or a preset may set
RUN_KEYS = frozenset({"description", "model", "data", "trainer", "stop_below"})
TOP_KEYS = frozenset({"seeds", "groups", "runs", "report", "presets"})
CONFIG_FILE = "config.yaml"


def deep_merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` updated by ``override``: mappings merge recursively, any other value replaces."""
    out = copy.deepcopy(dict(base))
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


# ---------------------------------------------------------------------------------------------- finding
def config_name(path: str | Path, root: str | Path) -> str:
    """``paper/experiment`` for ``<root>/paper/experiment/config.yaml``, ``paper/experiment/stem`` for
    ``<root>/paper/experiment/stem.yaml``."""
    rel = Path(path).resolve().relative_to(Path(root).resolve())
    return str(rel.parent if rel.name == CONFIG_FILE else rel.with_suffix("")).replace("\\", "/")


def all_configs(root: str | Path) -> list[Path]:
    """Every recipe config under ``root`` (``<paper>/<experiment>/*.yaml``)."""
    return sorted(Path(root).glob("*/*/*.yaml"))


def find_configs(target: str | Path, root: str | Path) -> list[Path]:
    """The configs ``target`` names: a YAML path; a paper folder (all of its configs); an experiment
    (``paper/experiment``: its configs); a config name (``paper/experiment/stem``); or, without the paper,
    a name that only one paper has (``fig1_mnist_lenet``, ``table1_batch_size/mnist``).

    Raises:
        FileNotFoundError: nothing matches; the message lists the known names.
        ValueError: a short name that several papers have.
    """
    path = Path(target)
    if path.suffix in (".yaml", ".yml") and path.is_file():
        return [path]
    configs = all_configs(root)
    names = {config_name(p, root): p for p in configs}
    key = str(target).strip("/")
    exact = [p for name, p in names.items() if name == key or name.startswith(key + "/")]
    if exact:
        return exact
    short = [
        p
        for name, p in names.items()
        if name.split("/", 1)[1] == key or name.split("/", 1)[1].startswith(key + "/")
    ]
    papers = {config_name(p, root).split("/")[0] for p in short}
    if len(papers) > 1:
        raise ValueError(f"{key!r} is in several papers ({', '.join(sorted(papers))}); name the paper too")
    if short:
        return short
    raise FileNotFoundError(f"no recipe config {key!r}; known: {', '.join(names)}")


# ---------------------------------------------------------------------------------------------- loading
def _check_keys(where: str, section: Any, allowed: Iterable[str]) -> None:
    if not isinstance(section, Mapping):
        raise ValueError(f"{where}: expected a mapping, got {section!r}")
    unknown = sorted(set(section) - set(allowed))
    if unknown:
        raise ValueError(
            f"{where}: unknown key(s) {', '.join(unknown)}; allowed: {', '.join(sorted(allowed))}"
        )


def load_config(path: str | Path, root: str | Path, preset: str = "paper") -> dict[str, Any]:
    """Read a recipe YAML and apply ``presets[preset]`` (the ``paper`` preset is the file's own settings).

    The result has the file's keys (less ``presets``) plus ``name``, ``preset`` and ``path``.

    Raises:
        ValueError: an unknown preset or key, or a preset that names a group or run the config lacks.
    """
    path = Path(path)
    raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    if not isinstance(raw, Mapping) or "runs" not in raw:
        raise ValueError(f"{path}: a recipe config is a mapping with a 'runs' section")
    _check_keys(str(path), raw, TOP_KEYS | RUN_KEYS)
    presets = raw.get("presets") or {}
    _check_keys(f"{path}: presets", presets, PRESETS)
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    override = presets.get(preset) or {}
    _check_keys(f"{path}: presets.{preset}", override, (TOP_KEYS | RUN_KEYS) - {"presets"})
    for section in ("groups", "runs"):
        extra = sorted(set(override.get(section) or {}) - set(raw.get(section) or {}))
        if extra:
            raise ValueError(
                f"{path}: presets.{preset}.{section} names {extra} that the config does not define"
            )
    config = deep_merge({k: v for k, v in raw.items() if k != "presets"}, override)
    for section in ("groups", "runs"):  # a preset drops a group or run by setting it to null
        for name, value in (override.get(section) or {}).items():
            if value is None:
                del config[section][name]
    if not config["runs"] or ("groups" in raw and not config.get("groups")):
        raise ValueError(f"{path}: presets.{preset} drops every run or every group")
    for where in ("groups", "runs"):
        for key, value in (config.get(where) or {}).items():
            _check_keys(f"{path}: {where}.{key}", value or {}, RUN_KEYS)
    config.update(name=config_name(path, root), preset=preset, path=str(path))
    return config


@dataclass(frozen=True)
class RunSpec:
    """One curve of one panel: the merged settings (LightningCLI sections and ``stop_below``) of the
    config, its group and its run."""

    config: str
    group: str | None
    run: str
    settings: Mapping[str, Any]

    @property
    def name(self) -> str:
        return self.run if self.group is None else f"{self.group}/{self.run}"


def expand(config: Mapping[str, Any]) -> list[RunSpec]:
    """Every (group, run) of ``config`` with its settings: config, then group, then run overrides.

    Raises:
        ValueError: a run without ``model.class_path``, ``model.init_args.optimizer``,
            ``model.init_args.model`` or ``data.class_path``.
    """
    base = {k: v for k, v in config.items() if k in RUN_KEYS}
    groups = config.get("groups") or {None: {}}
    specs = []
    for group, group_settings in groups.items():
        for run, run_settings in config["runs"].items():
            settings = deep_merge(deep_merge(base, group_settings or {}), run_settings or {})
            model, data = settings.get("model") or {}, settings.get("data") or {}
            task = model.get("init_args") or {}
            for missing, present in (
                ("model.class_path", "class_path" in model),
                ("model.init_args.optimizer", "optimizer" in task),
                ("model.init_args.model", "model" in task),
                ("data.class_path", "class_path" in data),
            ):
                if not present:
                    raise ValueError(f"{config['name']}: run {run!r} has no {missing}")
            specs.append(RunSpec(config["name"], group, run, settings))
    return specs


def select(specs: Iterable[RunSpec], patterns: Sequence[str] | None) -> list[RunSpec]:
    """The runs whose ``group/run`` name matches one of the glob ``patterns`` (all without patterns).

    Raises:
        ValueError: no run matches.
    """
    specs = list(specs)
    if not patterns:
        return specs
    chosen = [s for s in specs if any(fnmatch.fnmatchcase(s.name, p) for p in patterns)]
    if not chosen:
        raise ValueError(f"--runs {list(patterns)} matches none of {', '.join(s.name for s in specs)}")
    return chosen


def seeds_of(config: Mapping[str, Any], override: Sequence[int] | None = None) -> list[int]:
    """``override`` or the config's ``seeds`` (``[0]`` without).

    Raises:
        ValueError: not a non-empty list of integers.
    """
    seeds = list(override) if override else list(config.get("seeds") or [0])
    if not seeds or not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds):
        raise ValueError(f"seeds must be a list of integers, got {seeds!r}")
    return seeds


__all__ = [
    "PRESETS",
    "RunSpec",
    "all_configs",
    "config_name",
    "deep_merge",
    "expand",
    "find_configs",
    "load_config",
    "seeds_of",
    "select",
]
