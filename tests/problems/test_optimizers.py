"""build_optimizer / needs_closure: every name of the table, the paper's values, and the errors."""

from __future__ import annotations

import pytest
import torch
from lightning.pytorch.core.optimizer import LightningOptimizer
from torch import nn

from lightning_sqn.optim import LBFGS, LSR1
from lightning_sqn.problems.optimizers import OPTIMIZERS, PAPER_EXPERIMENTS, build_optimizer, needs_closure

NAMES = ["lsr1", "lsr1_ls", "lbfgs", "sgd", "momentum", "nag", "adadelta", "adam"]


def _params() -> list[torch.Tensor]:
    torch.manual_seed(0)
    return list(nn.Linear(3, 2).double().parameters())


def test_the_table_has_exactly_the_papers_optimizers():
    assert list(OPTIMIZERS) == NAMES


@pytest.mark.parametrize("name", NAMES)
def test_every_name_builds_with_its_defaults_and_takes_a_step(name):
    params = _params()
    opt = build_optimizer(name, params)
    spec = OPTIMIZERS[name]
    assert type(opt) is spec.cls
    for key, value in {**spec.defaults, **spec.fixed}.items():
        assert opt.defaults[key] == value, key
    x = torch.randn(8, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    y = torch.randn(8, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    before = [p.detach().clone() for p in params]

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = ((x @ params[0].T + params[1] - y) ** 2).mean()
        loss.backward()
        return loss

    if needs_closure(opt):
        opt.step(closure)
    else:
        closure()
        opt.step()
    assert any(not torch.equal(b, p) for b, p in zip(before, params))


def test_the_appendix_values():
    # Appendix, MNIST: "the learning rate was set to 0.003 where needed, and the momentum was set to 0.9"
    for name in ("sgd", "momentum", "nag"):
        assert OPTIMIZERS[name].defaults["lr"] == 0.003
    assert OPTIMIZERS["momentum"].defaults["momentum"] == OPTIMIZERS["nag"].defaults["momentum"] == 0.9
    assert OPTIMIZERS["nag"].fixed["nesterov"] is True and OPTIMIZERS["momentum"].fixed["nesterov"] is False
    assert OPTIMIZERS["sgd"].fixed["momentum"] == 0.0
    # "AdaDelta did not take any parameters": Zeiler's rule, no learning rate
    assert OPTIMIZERS["adadelta"].defaults["lr"] == 1.0
    # Section 4: memory 5 for L-SR1 and L-BFGS, L-BFGS "with forgetting every 5 steps"
    assert OPTIMIZERS["lsr1"].defaults["memory"] == OPTIMIZERS["lbfgs"].defaults["memory"] == 5
    assert OPTIMIZERS["lbfgs"].defaults["forget_every"] == 5
    assert PAPER_EXPERIMENTS["mnist"]["weight_decay"] == 1e-4
    assert PAPER_EXPERIMENTS["cifar10"]["weight_decay"] == 1e-3
    assert PAPER_EXPERIMENTS["cifar10"]["lr"] == 0.01


def test_the_name_fixes_the_method_and_options_override_defaults():
    tr = build_optimizer("lsr1", _params(), memory=3)
    ls = build_optimizer("lsr1_ls", _params())
    assert isinstance(tr, LSR1) and tr.defaults["method"] == "trust_region" and tr.defaults["memory"] == 3
    assert ls.defaults["method"] == "line_search"
    lb = build_optimizer("lbfgs", _params(), forget_every=None)
    assert isinstance(lb, LBFGS) and lb.forget_every is None
    nag = build_optimizer("nag", _params(), lr=0.01, momentum=0.5)
    assert nag.param_groups[0]["lr"] == 0.01 and nag.param_groups[0]["momentum"] == 0.5


def test_unknown_name_lists_the_valid_ones():
    with pytest.raises(ValueError, match=r"valid names: 'lsr1', 'lsr1_ls', 'lbfgs', 'sgd'.*'adam'"):
        build_optimizer("rmsprop", _params())


def test_unknown_option_lists_the_valid_ones():
    with pytest.raises(ValueError, match=r"option\(s\) 'momentum' for optimizer 'adam'.*valid.*betas"):
        build_optimizer("adam", _params(), momentum=0.9)
    with pytest.raises(ValueError, match=r"'lsr1'.*valid options: memory, gamma"):
        build_optimizer("lsr1", _params(), lr=1.0)


def test_an_option_the_name_fixes_is_refused():
    with pytest.raises(ValueError, match="'nag' sets nesterov=True itself"):
        build_optimizer("nag", _params(), nesterov=False)
    with pytest.raises(ValueError, match="method='trust_region'"):
        build_optimizer("lsr1", _params(), method="line_search")
    assert "method" not in OPTIMIZERS["lsr1"].options()


def test_needs_closure():
    assert [needs_closure(n) for n in NAMES] == [True, True, True, False, False, False, False, False]
    lsr1 = build_optimizer("lsr1", _params())
    assert needs_closure(lsr1) and needs_closure(LightningOptimizer(lsr1))
    assert needs_closure(torch.optim.LBFGS(_params()))
    assert not needs_closure(build_optimizer("adam", _params()))
    with pytest.raises(ValueError, match="valid names"):
        needs_closure("newton")
