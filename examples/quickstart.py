"""Quickstart: L-SR1 (trust region) vs L-BFGS vs SGD on scikit-learn's digits, in a plain PyTorch loop.

Runs in well under a minute on 2 CPU cores and needs no download (the digits ship with scikit-learn):

    python examples/quickstart.py

Every quasi-Newton step is driven by a closure on the same mini-batch; the table shows the loss and
accuracy after each epoch and what the L-SR1 optimizer recorded about its trust region.
"""

from __future__ import annotations

import argparse
import time

import torch
from sklearn.datasets import load_digits
from torch import nn

import lightning_sqn


def make_data(seed: int) -> tuple[torch.Tensor, ...]:
    X, y = load_digits(return_X_y=True)
    X = torch.tensor(X, dtype=torch.float32) / 16.0
    y = torch.tensor(y)
    perm = torch.randperm(len(X), generator=torch.Generator().manual_seed(seed))
    X, y = X[perm], y[perm]
    return X[:1500], y[:1500], X[1500:], y[1500:]


def make_model(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(64, 64), nn.Tanh(), nn.Linear(64, 10))


def run(name: str, epochs: int, batch: int, seed: int) -> list[tuple[int, float, float, str]]:
    Xtr, ytr, Xte, yte = make_data(seed)
    model = make_model(seed)
    if name == "L-SR1 (trust region)":
        opt: torch.optim.Optimizer = lightning_sqn.LSR1(model.parameters(), memory=5)
    elif name == "L-BFGS (forget every 5)":
        opt = lightning_sqn.LBFGS(model.parameters(), memory=5, forget_every=5)
    else:
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True)
    loss_fn = nn.CrossEntropyLoss()
    rows = []
    for epoch in range(1, epochs + 1):
        order = torch.randperm(len(Xtr), generator=torch.Generator().manual_seed(seed + epoch))
        for i in range(0, len(Xtr), batch):
            idx = order[i : i + batch]

            def closure(idx: torch.Tensor = idx) -> torch.Tensor:
                opt.zero_grad()
                loss = loss_fn(model(Xtr[idx]), ytr[idx])
                loss.backward()
                return loss

            opt.step(closure)
        with torch.no_grad():
            train_loss = loss_fn(model(Xtr), ytr).item()
            test_err = 100.0 * (model(Xte).argmax(1) != yte).float().mean().item()
        extra = ""
        if isinstance(opt, lightning_sqn.LSR1):
            c = opt.counters.as_dict()
            radius = opt.last_step.next_radius
            extra = (
                f"radius={radius:.3g} accepted={c['accepted_steps']}/{c['steps']} "
                f"skipped={c['skipped_pairs']}"
            )
        rows.append((epoch, train_loss, test_err, extra))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--batch", type=int, default=250)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    for name in ("L-SR1 (trust region)", "L-BFGS (forget every 5)", "SGD + Nesterov (lr 0.1)"):
        t0 = time.perf_counter()
        rows = run(name, args.epochs, args.batch, args.seed)
        print(f"\n{name}  ({time.perf_counter() - t0:.1f} s)")
        print(f"{'epoch':>5} {'train loss':>11} {'test err %':>10}  optimizer")
        for epoch, loss, err, extra in rows:
            print(f"{epoch:>5} {loss:>11.4f} {err:>10.2f}  {extra}")


if __name__ == "__main__":
    main()
