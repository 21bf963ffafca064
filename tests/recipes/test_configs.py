"""Every recipe config loads under every preset, is headed by its launch command, states the paper's
settings, and instantiates its model, task, DataModule and Trainer; the runner's config handling."""

from __future__ import annotations

import argparse

import pytest
from recipe_helpers import load_runner

from lightning_sqn.problems.optimizers import PAPER_EXPERIMENTS

RUNNER = load_runner()
CONFIGS = RUNNER.all_configs()
NAMES = [RUNNER.config_name(p) for p in CONFIGS]


def test_the_five_recipes_are_there() -> None:
    assert sorted({n.split("/")[0] for n in NAMES}) == [
        "fig1_mnist_lenet",
        "fig2_cifar_lenet",
        "fig5_resnet20",
        "fig6_sweeps",
        "table1_batch_size",
    ]
    for folder in {p.parent for p in CONFIGS}:
        assert (folder / "README.md").is_file(), folder


@pytest.mark.parametrize("path", CONFIGS, ids=NAMES)
def test_config_is_headed_by_its_launch_commands(path) -> None:
    head = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.startswith("#"):
            break
        head.append(line)
    text = "\n".join(head)
    name = RUNNER.config_name(path)
    assert f"python recipes/run.py fit {name} --preset paper" in text
    assert "--devices" in text  # the multi-GPU launch
    assert f"python recipes/run.py report {name}" in text


@pytest.mark.parametrize("preset", ["smoke", "cpu", "paper"])
@pytest.mark.parametrize("path", CONFIGS, ids=NAMES)
def test_config_instantiates(path, preset, fake_data) -> None:
    config = RUNNER.load_config(path, preset)
    specs = RUNNER.expand(config)
    assert specs and len({s.name for s in specs}) == len(specs)
    for spec in specs:
        closure = RUNNER.uses_closure(spec.settings)
        assert RUNNER.strategy_for(spec.settings, 1) == ("sqn" if closure else "auto")
        assert RUNNER.strategy_for(spec.settings, 4) == ("ddp_sqn" if closure else "ddp")
        if preset != "smoke":  # the config is valid for LightningCLI (building all would take minutes)
            RUNNER.lightning_config(spec.settings, seed=0, data_dir=fake_data)
            continue
        # smoke: instantiate through LightningCLI, a forward pass on the fake data, the Trainer's callbacks
        cli = RUNNER.instantiate(
            RUNNER.lightning_config(spec.settings, seed=0, data_dir=fake_data, progress_bar=False)
        )
        task, datamodule, trainer = cli.model, cli.datamodule, cli.trainer
        assert datamodule.batch_size == spec.settings["batch_size"]
        datamodule.setup("fit")
        x, _ = next(iter(datamodule.train_dataloader()))
        assert task(x).shape == (x.shape[0], 10)
        names = {type(c).__name__ for c in trainer.callbacks}
        assert ({"TrustRegionMonitor", "SkippedUpdateCounter"} <= names) == closure
        assert type(trainer.strategy).__name__.startswith("SQN") == closure


def _settings(name: str, preset: str = "paper") -> dict[str, dict]:
    config = RUNNER.load_config(RUNNER.find_configs(name)[0], preset)
    return {s.name: s.settings for s in RUNNER.expand(config)} | {"_config": config}


@pytest.mark.parametrize(
    ("name", "problem"), [("fig1_mnist_lenet", "mnist"), ("fig2_cifar_lenet", "cifar10")]
)
def test_lenet_recipes_use_the_papers_settings(name, problem) -> None:
    paper = PAPER_EXPERIMENTS[problem]
    runs = _settings(name)
    assert runs["_config"]["seeds"] == list(range(10))  # "repeated 10 times"
    for group in ("no_bn", "bn"):
        for run in ("lsr1", "lbfgs", "nag", "sgd", "momentum", "adadelta"):
            s = runs[f"{group}/{run}"]
            assert s["model"]["batch_norm"] == (group == "bn")
            assert s["task"]["weight_decay"] == paper["weight_decay"]
            assert s["trainer"]["max_epochs"] == paper["epochs"]
            second = run in ("lsr1", "lbfgs")
            key = "batch_size_second_order" if second else "batch_size_first_order"
            assert s["batch_size"] == paper[key]
            options = s.get("optimizer_options") or {}
            if second:
                assert options["memory"] == 5
            if run == "lbfgs":
                assert options["forget_every"] == 5
            if run in ("nag", "sgd", "momentum"):
                assert options["lr"] == paper["lr"]
            if run in ("nag", "momentum"):
                assert options["momentum"] == paper["momentum"]


def test_table1_and_resnet_recipes_use_the_papers_settings() -> None:
    for name in ("table1_batch_size/mnist", "table1_batch_size/cifar10"):
        runs = _settings(name)
        for group, (batch, epochs) in {
            "b500": (500, 50),
            "b1000": (1000, 50),
            "b10000": (10000, 200),
        }.items():
            for run in ("lsr1", "adam", "nag"):
                s = runs[f"{group}/{run}"]
                assert (s["batch_size"], s["trainer"]["max_epochs"], s["model"]["batch_norm"]) == (
                    batch,
                    epochs,
                    True,
                )
    resnet = PAPER_EXPERIMENTS["resnet20"]
    runs = _settings("fig5_resnet20")
    assert {s["batch_size"] for k, s in runs.items() if k != "_config"} == {128}
    assert runs["momentum"]["optimizer_options"] == {"lr": resnet["lr"], "momentum": resnet["momentum"]}
    assert runs["momentum"]["task"]["lr_milestones"] == list(resnet["lr_milestones"])
    assert runs["lsr1"]["optimizer_options"]["trust_region"] == {"decrease": 0.5, "increase": 2.0}
    assert runs["lsr1"]["data"]["augment"] is True
    radius = _settings("fig6_sweeps/radius")
    pairs = {
        (
            s["optimizer_options"]["trust_region"]["decrease"],
            s["optimizer_options"]["trust_region"]["increase"],
        )
        for k, s in radius.items()
        if k != "_config"
    }
    assert pairs == {(d, i) for d in (0.2, 0.5, 0.8) for i in (1.2, 2.0)}
    memory = _settings("fig6_sweeps/memory")
    assert sorted(s["optimizer_options"]["memory"] for k, s in memory.items() if k != "_config") == [2, 5, 10]
    batch = _settings("fig6_sweeps/batch")
    assert sorted(s["batch_size"] for k, s in batch.items() if k != "_config") == [128, 512, 2048, 8192]


def test_trust_region_factors_reach_the_optimizer() -> None:
    settings = _settings("fig6_sweeps/radius")["dec0.2_inc1.2"]
    cli = RUNNER.instantiate(RUNNER.lightning_config(settings, seed=0, data_dir="unused"))
    policy = cli.model.configure_optimizers()._stepper.policy
    assert (policy.decrease, policy.increase, policy.low, policy.high) == (0.2, 1.2, 0.1, 0.75)


def test_presets_override_and_are_checked(tmp_path) -> None:
    smoke = _settings("table1_batch_size/mnist", "smoke")
    assert smoke["b10000/lsr1"]["batch_size"] == 64 and smoke["b10000/lsr1"]["trainer"]["max_epochs"] == 2
    cpu = _settings("fig1_mnist_lenet", "cpu")
    assert cpu["bn/nag"]["data"]["train_subset"] == 10000 and cpu["bn/nag"]["batch_size"] == 20
    bad = tmp_path / "bad.yaml"
    bad.write_text("runs: {a: {optimizer: sgd, batch_size: 4}}\npresets: {smoke: {runs: {b: {}}}}\n")
    with pytest.raises(ValueError, match="does not define"):
        RUNNER.load_config(bad, "smoke")
    bad.write_text("runs: {a: {optimizer: sgd, batch_size: 4, epochs: 3}}\n")
    with pytest.raises(ValueError, match="unknown key"):
        RUNNER.load_config(bad)
    with pytest.raises(ValueError, match="preset"):
        RUNNER.load_config(CONFIGS[0], "huge")


def test_runner_helpers() -> None:
    assert RUNNER.deep_merge({"a": {"b": 1, "c": 2}, "d": [1]}, {"a": {"b": 3}, "d": [2]}) == {
        "a": {"b": 3, "c": 2},
        "d": [2],
    }
    assert RUNNER.parse_assignment("trainer.max_epochs=3") == {"trainer": {"max_epochs": 3}}
    assert RUNNER.parse_assignment("data.train_subset=null") == {"data": {"train_subset": None}}
    with pytest.raises(argparse.ArgumentTypeError):
        RUNNER.parse_assignment("max_epochs")
    specs = RUNNER.expand(RUNNER.load_config(RUNNER.find_configs("fig1_mnist_lenet")[0]))
    assert [s.name for s in RUNNER.select(specs, ["bn/l*"])] == ["bn/lsr1", "bn/lbfgs", "bn/lbfgs_no_forget"]
    with pytest.raises(ValueError, match="matches none"):
        RUNNER.select(specs, ["nothing"])
    assert len(RUNNER.find_configs("fig6_sweeps")) == 3
    with pytest.raises(FileNotFoundError, match="known"):
        RUNNER.find_configs("fig9")


def test_set_overrides_every_run_after_groups_and_runs(capsys) -> None:
    argv = ["fit", "table1_batch_size/mnist", "--preset", "cpu", "--dry-run", "--runs", "b10000/*"]
    assert RUNNER.main([*argv, "--set", "trainer.max_epochs=1", "--set", "batch_size=2000"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3
    for line in lines:  # the b10000 group sets 5 epochs and batch 10000; --set wins
        assert '"trainer": {"max_epochs": 1}' in line and '"batch_size": 2000' in line
    with pytest.raises(ValueError, match="unknown key"):
        RUNNER.main([*argv, "--set", "seeds=[1]"])
