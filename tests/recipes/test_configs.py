"""Every recipe config loads under every preset, is headed by its launch command, states the paper's
settings, and instantiates its model, task, DataModule and Trainer; the runner's config handling."""

from __future__ import annotations

import pytest
from recipe_helpers import RECIPES, load_runner

from lightning_sqn.problems.optimizers import PAPER_EXPERIMENTS
from lightning_sqn.recipes import (
    all_configs,
    config_name,
    deep_merge,
    expand,
    find_configs,
    instantiate,
    lightning_config,
    load_config,
    monitors,
    needs_closure,
    optimizer_of,
    select,
    strategy_for,
)

RUNNER = load_runner()
CONFIGS = all_configs(RECIPES)
NAMES = [config_name(p, RECIPES) for p in CONFIGS]
PAPER = "lsr1_ramamurthy2017"


def test_one_folder_per_paper_with_its_experiments() -> None:
    assert sorted({n.split("/")[0] for n in NAMES}) == [
        "ellipsoidal_tr_kohler2019",
        "hessian_free_martens2010",
        PAPER,
        "sampled_qn_berahas",
    ]
    assert {n for n in NAMES if not n.startswith(("ellipsoidal", PAPER))} == {
        "hessian_free_martens2010/autoencoders/mnist",
        "hessian_free_martens2010/autoencoders/curves",
        "hessian_free_martens2010/autoencoders/faces",
        "sampled_qn_berahas/toy_sin/toy",
        "sampled_qn_berahas/mnist/mnist",
    }
    assert sorted({n.split("/")[1] for n in NAMES if n.startswith(PAPER)}) == [
        "fig1_mnist_lenet",
        "fig2_cifar_lenet",
        "fig5_resnet20",
        "fig6_sweeps",
        "table1_batch_size",
    ]
    for folder in {p.parent for p in CONFIGS} | {p.parent.parent for p in CONFIGS}:
        assert (folder / "README.md").is_file(), folder
    index = (RECIPES / "README.md").read_text(encoding="utf-8")
    for paper in {n.split("/")[0] for n in NAMES}:
        assert f"]({paper}/README.md)" in index


@pytest.mark.parametrize("path", CONFIGS, ids=NAMES)
def test_config_is_headed_by_its_launch_commands(path) -> None:
    head = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.startswith("#"):
            break
        head.append(line)
    text = "\n".join(head)
    name = config_name(path, RECIPES)
    assert f"python recipes/run.py fit {name} --preset paper" in text
    assert "--devices" in text  # the multi-GPU launch
    assert f"python recipes/run.py report {name}" in text


def _check(settings: dict) -> bool:
    """The strategy and callbacks the runner gives a run follow its optimizer's class."""
    closure = needs_closure(optimizer_of(settings))
    assert strategy_for(closure, 1) == ("sqn" if closure else "auto")
    assert strategy_for(closure, 4) == ("ddp_sqn" if closure else "ddp")
    return closure


@pytest.mark.parametrize("preset", ["smoke", "cpu", "paper"])
@pytest.mark.parametrize("path", CONFIGS, ids=NAMES)
def test_config_instantiates(path, preset, fake_data) -> None:
    config = load_config(path, RECIPES, preset)
    specs = expand(config)
    assert specs and len({s.name for s in specs}) == len(specs)
    for spec in specs:
        closure = _check(spec.settings)
        if preset != "smoke":  # the config is valid for LightningCLI (building all would take minutes)
            lightning_config(spec.settings, seed=0, data_dir=fake_data)
            continue
        # smoke: instantiate through LightningCLI, a forward pass on the fake data, the Trainer's callbacks
        cli, _ = instantiate(spec.settings, seed=0, data_dir=fake_data)
        task, datamodule, trainer = cli.model, cli.datamodule, cli.trainer
        # the toy problem's batch is its whole set (100 points)
        assert datamodule.batch_size == spec.settings["data"]["init_args"].get("batch_size", 100)
        datamodule.setup("fit")
        x, _ = next(iter(datamodule.train_dataloader()))
        out = task(x)
        assert out.shape[0] == x.shape[0] and out[0].numel() in (
            10,
            2,
            x[0].numel(),
        )  # logits (10 classes, or the toy problem's 2) or a reconstruction
        names = {type(c).__name__ for c in trainer.callbacks}
        assert names & {"TrustRegionMonitor", "SkippedUpdateCounter"} == set(
            monitors(optimizer_of(spec.settings))
        )
        assert ("TrustRegionMonitor" in names) == closure
        assert type(trainer.strategy).__name__.startswith("SQN") == closure


def _runs(name: str, preset: str = "paper") -> tuple[dict, dict[str, dict]]:
    config = load_config(find_configs(name, RECIPES)[0], RECIPES, preset)
    return config, {s.name: s.settings for s in expand(config)}


def _optimizer(settings: dict, fake_data="unused"):
    """The optimizer the run would train with (built by LightningCLI from the config)."""
    cli, _ = instantiate(settings, seed=0, data_dir=fake_data)
    return cli.model.configure_optimizers()


@pytest.mark.parametrize(
    ("name", "problem"), [("fig1_mnist_lenet", "mnist"), ("fig2_cifar_lenet", "cifar10")]
)
def test_lenet_recipes_use_the_papers_settings(name, problem) -> None:
    import torch

    from lightning_sqn import LBFGS, LSR1

    paper = PAPER_EXPERIMENTS[problem]
    config, runs = _runs(name)
    assert config["seeds"] == list(range(10))  # "repeated 10 times"
    for group in ("no_bn", "bn"):
        for run in ("lsr1", "lbfgs", "nag", "sgd", "momentum", "adadelta"):
            s = runs[f"{group}/{run}"]
            assert s["model"]["init_args"]["model"]["init_args"]["batch_norm"] == (group == "bn")
            assert s["model"]["init_args"]["weight_decay"] == paper["weight_decay"]
            assert s["trainer"]["max_epochs"] == paper["epochs"]
            second = run in ("lsr1", "lbfgs")
            key = "batch_size_second_order" if second else "batch_size_first_order"
            assert s["data"]["init_args"]["batch_size"] == paper[key]
    built = {
        run: _optimizer(runs[f"bn/{run}"]) for run in ("lsr1", "lbfgs", "nag", "sgd", "momentum", "adadelta")
    }
    assert type(built["lsr1"]) is LSR1 and built["lsr1"].defaults["memory"] == 5
    assert built["lsr1"].defaults["gamma"] == 0.1 and built["lsr1"].defaults["method"] == "trust_region"
    assert type(built["lbfgs"]) is LBFGS and built["lbfgs"].defaults["memory"] == 5
    assert built["lbfgs"].defaults["forget_every"] == 5
    for run, momentum, nesterov in (("nag", 0.9, True), ("sgd", 0.0, False), ("momentum", 0.9, False)):
        d = built[run].defaults
        assert type(built[run]) is torch.optim.SGD
        assert (d["lr"], d["momentum"], d["nesterov"], d["weight_decay"]) == (
            paper["lr"],
            momentum,
            nesterov,
            0,
        )
    assert type(built["adadelta"]) is torch.optim.Adadelta and built["adadelta"].defaults["lr"] == 1.0


def test_table1_and_resnet_recipes_use_the_papers_settings() -> None:
    import torch

    for name in ("table1_batch_size/mnist", "table1_batch_size/cifar10"):
        _, runs = _runs(name)
        for group, (batch, epochs) in {
            "b500": (500, 50),
            "b1000": (1000, 50),
            "b10000": (10000, 200),
        }.items():
            for run in ("lsr1", "adam", "nag"):
                s = runs[f"{group}/{run}"]
                assert s["data"]["init_args"]["batch_size"] == batch
                assert s["trainer"]["max_epochs"] == epochs
                assert s["model"]["init_args"]["model"]["init_args"]["batch_norm"] is True
    resnet = PAPER_EXPERIMENTS["resnet20"]
    _, runs = _runs("fig5_resnet20")
    assert {s["data"]["init_args"]["batch_size"] for s in runs.values()} == {128}
    momentum = _optimizer(runs["momentum"])
    assert type(momentum) is dict  # optimizer + MultiStepLR at the paper's milestones
    sgd, scheduler = momentum["optimizer"], momentum["lr_scheduler"]["scheduler"]
    assert (sgd.defaults["lr"], sgd.defaults["momentum"]) == (resnet["lr"], resnet["momentum"])
    assert (
        sorted(scheduler.milestones) == list(resnet["lr_milestones"])
        and scheduler.gamma == resnet["lr_gamma"]
    )
    adam = _optimizer(runs["adam"])
    assert (
        type(adam) is torch.optim.Adam
        and adam.defaults["lr"] == 1e-3
        and adam.defaults["betas"] == (0.9, 0.999)
    )
    assert runs["lsr1"]["data"]["init_args"]["augment"] is True
    _, radius = _runs("fig6_sweeps/radius")
    pairs = {(p.decrease, p.increase) for p in (_optimizer(s)._stepper.policy for s in radius.values())}
    assert pairs == {(d, i) for d in (0.2, 0.5, 0.8) for i in (1.2, 2.0)}
    _, memory = _runs("fig6_sweeps/memory")
    assert sorted(_optimizer(s).defaults["memory"] for s in memory.values()) == [2, 5, 10]
    _, batch = _runs("fig6_sweeps/batch")
    assert sorted(s["data"]["init_args"]["batch_size"] for s in batch.values()) == [128, 512, 2048, 8192]


def test_trust_region_factors_reach_the_optimizer() -> None:
    _, runs = _runs("fig6_sweeps/radius")
    policy = _optimizer(runs["dec0.2_inc1.2"])._stepper.policy
    assert (policy.decrease, policy.increase, policy.low, policy.high) == (0.2, 1.2, 0.1, 0.75)


def test_presets_override_and_are_checked(tmp_path) -> None:
    _, smoke = _runs("table1_batch_size/mnist", "smoke")
    assert smoke["b10000/lsr1"]["data"]["init_args"]["batch_size"] == 64
    assert smoke["b10000/lsr1"]["trainer"]["max_epochs"] == 2
    _, cpu = _runs("table1_batch_size/mnist", "cpu")
    assert [cpu[f"{g}/adam"]["stop_below"] for g in ("b500", "b1000", "b10000")] == [1.1, 1.2, 1.5]
    _, cpu = _runs("fig1_mnist_lenet", "cpu")
    assert cpu["bn/nag"]["data"]["init_args"]["train_subset"] == 10000
    assert cpu["bn/nag"]["data"]["init_args"]["batch_size"] == 20
    root = tmp_path / "recipes"
    (root / "paper" / "exp").mkdir(parents=True)
    bad = root / "paper" / "exp" / "config.yaml"
    task = "{class_path: t, init_args: {model: {class_path: m}, optimizer: {class_path: o}}}"
    run = f"{{model: {task}, data: {{class_path: d}}}}"
    bad.write_text(f"runs: {{a: {run}}}\npresets: {{smoke: {{runs: {{b: {{}}}}}}}}\n")
    with pytest.raises(ValueError, match="does not define"):
        load_config(bad, root, "smoke")
    bad.write_text("runs: {a: {batch_size: 4}}\n")
    with pytest.raises(ValueError, match="unknown key"):
        load_config(bad, root)
    bad.write_text("runs: {a: {data: {class_path: d}}}\n")
    with pytest.raises(ValueError, match=r"has no model\.class_path"):
        expand(load_config(bad, root))
    bad.write_text(
        "runs: {a: {model: {class_path: t, init_args: {model: {class_path: m}}}, data: {class_path: d}}}\n"
    )
    with pytest.raises(ValueError, match=r"has no model\.init_args\.optimizer"):
        expand(load_config(bad, root))
    with pytest.raises(ValueError, match="preset"):
        load_config(CONFIGS[0], RECIPES, "huge")


def test_finding_configs() -> None:
    assert deep_merge({"a": {"b": 1, "c": 2}, "d": [1]}, {"a": {"b": 3}, "d": [2]}) == {
        "a": {"b": 3, "c": 2},
        "d": [2],
    }
    full = find_configs(f"{PAPER}/fig1_mnist_lenet", RECIPES)
    assert find_configs("fig1_mnist_lenet", RECIPES) == full  # the paper may be left out when unique
    assert len(find_configs("fig6_sweeps", RECIPES)) == 3
    assert len(find_configs(PAPER, RECIPES)) == len([n for n in NAMES if n.startswith(PAPER + "/")]) == 8
    assert find_configs("table1_batch_size/mnist", RECIPES) == [
        full[0].parents[1] / "table1_batch_size/mnist.yaml"
    ]
    assert find_configs(str(full[0]), RECIPES) == full
    with pytest.raises(FileNotFoundError, match="known"):
        find_configs("fig9", RECIPES)
    specs = expand(load_config(full[0], RECIPES))
    assert [s.name for s in select(specs, ["bn/l*"])] == ["bn/lsr1", "bn/lbfgs", "bn/lbfgs_no_forget"]
    with pytest.raises(ValueError, match="matches none"):
        select(specs, ["nothing"])


def test_overrides_are_lightning_cli_arguments_applied_after_groups_and_runs(capsys) -> None:
    argv = ["fit", "table1_batch_size/mnist", "--preset", "cpu", "--dry-run", "--runs", "b10000/*"]
    assert RUNNER.main([*argv, "--trainer.max_epochs=1", "--data.init_args.batch_size=2000"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3 and all(
        line.endswith("--trainer.max_epochs=1 --data.init_args.batch_size=2000") for line in lines
    )
    for bad in (["--max_epochs=3"], ["--trainer.max_epochs", "3"]):
        with pytest.raises(SystemExit):
            RUNNER.main([*argv, *bad])
    # applied by LightningCLI to the run's config: the Trainer and DataModule get the overridden values
    _, runs = _runs("table1_batch_size/mnist", "cpu")
    cli, _ = instantiate(
        runs["b10000/lsr1"],
        ["--trainer.max_epochs=1", "--data.init_args.batch_size=2000"],
        seed=0,
        data_dir="x",
    )
    assert cli.trainer.max_epochs == 1 and cli.datamodule.batch_size == 2000
    # an override that changes the optimizer's kind changes the strategy and callbacks with it
    _, fig1 = _runs("fig1_mnist_lenet", "smoke")
    cli, _ = instantiate(fig1["bn/nag"], ["--model.optimizer=lightning_sqn.LSR1"], seed=0, data_dir="x")
    assert type(cli.trainer.strategy).__name__ == "SQNSingleDeviceStrategy"
    assert "TrustRegionMonitor" in {type(c).__name__ for c in cli.trainer.callbacks}
