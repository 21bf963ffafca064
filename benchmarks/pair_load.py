"""Loading m curvature pairs into a limited-memory matrix: ``load`` (batched) against ``update`` per pair.

Sampled quasi-Newton methods (``SampledLSR1``, ``SampledLBFGS``) and ``CurvaturePairSampler`` replace the
memory by m freshly sampled pairs. ``LimitedMemoryMatrix.load`` writes them at once, forms their Gram
matrix in one pass and decides each pair on the host (L-SR1: plus one combination pass and one read per
pair for the skip rule's explicit residual); the reference is a reset followed by one ``update`` per pair
(two passes and two reads each for L-SR1, one pass and one read for L-BFGS). Both keep the same
pairs; the script checks that the two matrices agree.

Pairs: y_i = A s_i + noise with A a random symmetric matrix applied blockwise (a stand-in for Hessian
products; the decisions do not depend on it). Medians of ``--repeats`` calls, the two variants
interleaved, host reads counted by ``lightning_sqn._device.HostReadCounter``.

    python benchmarks/pair_load.py [--n 987210] [--memory 5] [--repeats 15] [--device cpu]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from lightning_sqn._device import HostReadCounter
from lightning_sqn.qn.lbfgs import LBFGSMatrix
from lightning_sqn.qn.lsr1 import LSR1Matrix


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def pairs(n: int, m: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    S = torch.randn(m, n, generator=gen)
    block = torch.randn(64, 64, generator=gen)
    A = block + block.T
    pad = -n % 64
    Sp = torch.nn.functional.pad(S, (0, pad)).view(m, -1, 64)
    Y = (Sp @ A).reshape(m, -1)[:, :n] + 0.1 * torch.randn(m, n, generator=gen)
    return S.to(device), Y.to(device)


def one_by_one(mat, S: torch.Tensor, Y: torch.Tensor) -> int:
    mat.reset()
    for s, y in zip(S, Y, strict=True):
        mat.update(s, y)
    return mat.memory.count()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=987_210, help="pair dimension (default: the MLP's)")
    parser.add_argument("--memory", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    S, Y = pairs(args.n, args.memory, device)
    print(f"- n = {args.n:,}, m = {args.memory}, float32, {device}, threads {torch.get_num_threads()}")
    print("| matrix | variant | pairs kept | ms (median) | host reads |")
    print("|---|---|---|---|---|")
    for name, make in (
        ("LSR1 (B form)", lambda: LSR1Matrix(args.memory, args.n, dtype=torch.float32, device=device)),
        ("LBFGS", lambda: LBFGSMatrix(args.memory, args.n, dtype=torch.float32, device=device)),
    ):
        mats = {"load": make(), "update per pair": make()}
        funcs = {"load": lambda mat: mat.load(S, Y), "update per pair": lambda mat: one_by_one(mat, S, Y)}
        times: dict[str, list[float]] = {k: [] for k in mats}
        kept, reads = {}, {}
        for r in range(args.repeats + 2):
            for key in mats:
                sync(device)
                t0 = time.perf_counter()
                kept[key] = funcs[key](mats[key])
                sync(device)
                if r >= 2:
                    times[key].append(time.perf_counter() - t0)
        for key in mats:
            with HostReadCounter() as count:
                funcs[key](mats[key])
            reads[key] = count.host_reads
        a, b = mats["load"].to_dense, mats["update per pair"].to_dense
        if args.n <= 4096:
            torch.testing.assert_close(a(), b(), rtol=1e-3, atol=1e-3)
        if kept["load"] != kept["update per pair"]:
            raise AssertionError(f"{name}: load kept {kept['load']}, updates {kept['update per pair']}")
        for key in mats:
            ms = statistics.median(times[key]) * 1e3
            print(f"| {name} | {key} | {kept[key]} | {ms:.2f} | {reads[key]} |")


if __name__ == "__main__":
    main()
