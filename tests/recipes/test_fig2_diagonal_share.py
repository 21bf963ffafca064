"""The Fig. 2 script of Kohler et al. (diagonal share of the Hessian): its smoke preset end to end on the
fake CIFAR-10 files, rows consistent with the baselines' formulas, the exact row of the small network equal
to the dense Hessian's share."""

from __future__ import annotations

import json

import pytest
from recipe_helpers import RECIPES, load_script
from torch import nn

from lightning_sqn.curvature.diagonal_share import ols_share, wigner_share

SCRIPT = RECIPES / "ellipsoidal_tr_kohler2019/fig2_diagonal_share/diagonal_share.py"


@pytest.fixture(scope="module")
def fig2():
    return load_script(SCRIPT, "recipes_fig2_diagonal_share")


def test_smoke_preset_writes_table_plot_and_rows(fig2, fake_data, tmp_path) -> None:
    assert fig2.main(["--preset", "smoke", "--data-dir", str(fake_data), "--out", str(tmp_path)]) == 0
    rows = json.loads((tmp_path / "results.json").read_text())["rows"]
    # 3 networks x 2 inputs x 2 states x 1 batch size, the small network exact and sampled
    assert len(rows) == 16
    assert {(r["network"], r["n"]) for r in rows} == {
        ("small_mlp", 954),
        ("simple_cnn", 62_006),
        ("mlp", 411_146),
    }
    assert {r["inputs"] for r in rows} == {"random", "cifar10"} and {r["state"] for r in rows} == {
        "init",
        "trained",
    }
    for r in rows:
        assert 0 < r["share"] <= 1 and r["batch"] == 4
        assert r["wigner"] == wigner_share(r["n"]) and r["ols"] == ols_share(r["n"], 4)
        assert r["exact"] == (r["stderr"] == 0.0) and r["exact"] == (r["columns"] == r["n"])
    assert sum(r["exact"] for r in rows) == 4
    report = (tmp_path / "report.md").read_text()
    assert report.count("\n| small_mlp |") == 8 and "all (exact)" in report
    assert (tmp_path / "diagonal_share.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_exact_row_is_the_dense_share(fig2) -> None:
    import torch
    from torch.func import hessian

    from lightning_sqn.curvature.diagonal_share import diagonal_share

    torch.manual_seed(0)
    net = fig2.build("small_mlp").double()
    x, y = torch.randn(6, 3, 32, 32, dtype=torch.float64), torch.randint(0, 10, (6,))
    row = fig2.measure(net, x, y, columns=8, seed=0, exact=True)
    params = dict(net.named_parameters())
    names = list(params)
    flat = torch.cat([p.detach().reshape(-1) for p in params.values()])

    def loss(v):
        chunks = dict(zip(names, v.split([p.numel() for p in params.values()]), strict=True))
        shaped = {k: c.view(params[k].shape) for k, c in chunks.items()}
        return nn.functional.cross_entropy(torch.func.functional_call(net, shaped, (x,)), y)

    assert row["exact"] and row["share"] == pytest.approx(diagonal_share(hessian(loss)(flat)), rel=1e-10)
    with pytest.raises(ValueError, match="unknown network"):
        fig2.build("vgg")
