"""Batched versus looped curvature-vector products of ``lightning_sqn.curvature``.

For each of :func:`~lightning_sqn.curvature.hvp_from_graph`,
:func:`~lightning_sqn.curvature.hvp_functional` and :func:`~lightning_sqn.curvature.ggn_vp` and each
block size ``m`` (``--ms``), the script times

* batched: one call with a block ``V`` of shape ``(n, m)``;
* looped: ``m`` calls, each with one column ``V[:, j]`` of shape ``(n,)``;
* single: one call with one vector of shape ``(n,)`` (the unit of the ratio).

and reports ``batched / (m x single)``. The target is a ratio of at most 0.6, i.e. a block of ``m``
products costs at most 0.6 ``m`` single products.

Model: a 784-1000-200-10 MLP with tanh activations (987,210 parameters; tanh rather than ReLU so that
the Hessian is not piecewise the GGN), cross-entropy, batch 400, float32, synthetic MNIST-shaped data
(N(0, 1) inputs, uniform labels), fixed seed. For ``hvp_from_graph`` the first-order graph
(``torch.autograd.grad(loss, params, create_graph=True)``) is built once outside the timed region and
reused by every call; the time of building it is reported separately. The other two functions build
everything they need inside each call.

Timing: every measurement runs ``--warmup`` untimed times first, then ``--repeats`` timed times
(batched, looped and single interleaved within each repeat); the median is reported. On CUDA the timers
are bracketed by ``torch.cuda.synchronize()`` and the peak memory is
``torch.cuda.max_memory_allocated`` above the memory allocated before the call (model, data, V and,
for ``hvp_from_graph``, the retained graph). On CPU there is no reliable per-call peak measure for
torch's allocations (``tracemalloc`` does not see them and max RSS is process-wide and monotone), so
the memory columns read "n/a"; the bytes of the result block are printed in either case.

Run ``python benchmarks/curvature_products.py --help`` for the options; see ``benchmarks/README.md``.
"""

from __future__ import annotations

import argparse
import gc
import shlex
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from lightning_sqn.curvature import ggn_vp, hvp_from_graph, hvp_functional

TARGET = 0.6
BATCH = 400


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--repeats", type=int, default=5, help="timed repeats per measurement (median)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed runs before the timed ones")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: keep)")
    parser.add_argument("--markdown", action="store_true", help="print the table as markdown")
    parser.add_argument("--ms", default="1,5,10", help="comma-separated block sizes m")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    args.ms = [int(s) for s in args.ms.split(",") if s.strip()]
    if not args.ms or min(args.ms) < 1:
        parser.error("--ms needs positive integers")
    if args.repeats < 1 or args.warmup < 0:
        parser.error("--repeats must be >= 1 and --warmup >= 0")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda requested but CUDA is not available")
    return args


def make_mlp() -> nn.Module:
    return nn.Sequential(
        nn.Flatten(), nn.Linear(784, 1000), nn.Tanh(), nn.Linear(1000, 200), nn.Tanh(), nn.Linear(200, 10)
    )


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass
class Measure:
    ms: float  # median wall time
    peak: int | None  # bytes above the baseline (CUDA only)


def measure(fn: Callable[[], object], device: torch.device) -> tuple[float, int | None]:
    """One timed run of ``fn``: (milliseconds, peak bytes above the pre-call allocation or None)."""
    peak = None
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
    t0 = time.perf_counter()
    out = fn()
    sync(device)
    elapsed = (time.perf_counter() - t0) * 1e3
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device) - base
    del out
    return elapsed, peak


def run_case(
    fns: dict[str, Callable[[], object]], warmup: int, repeats: int, device: torch.device
) -> dict[str, Measure]:
    for _ in range(warmup):
        for fn in fns.values():
            fn()
        sync(device)
    samples: dict[str, list[tuple[float, int | None]]] = {k: [] for k in fns}
    for r in range(repeats):
        keys = list(fns)
        keys = keys[r % len(keys) :] + keys[: r % len(keys)]  # rotate the order every repeat
        for k in keys:
            gc.collect()
            samples[k].append(measure(fns[k], device))
    result = {}
    for k, s in samples.items():
        peaks = [p for _, p in s if p is not None]
        result[k] = Measure(statistics.median(t for t, _ in s), max(peaks) if peaks else None)
    return result


def fmt_bytes(b: int | None) -> str:
    return "n/a" if b is None else f"{b / 2**20:.1f}"


def print_table(header: list[str], rows: list[list[str]], markdown: bool) -> None:
    if markdown:
        print("| " + " | ".join(header) + " |")
        print("| " + " | ".join("---" for _ in header) + " |")
        for row in rows:
            print("| " + " | ".join(row) + " |")
        return
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
    print("  ".join(h.rjust(w) for h, w in zip(header, widths, strict=True)))
    print("  ".join("-" * w for w in widths))
    for row in rows:
        print("  ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)))


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(args.seed)

    model = make_mlp().to(device)
    params = list(model.parameters())
    n = sum(p.numel() for p in params)
    inputs = torch.randn(BATCH, 1, 28, 28, device=device)
    targets = torch.randint(0, 10, (BATCH,), device=device)
    max_m = max(args.ms)
    V_all = torch.randn(n, max_m, device=device)
    v_single = torch.randn(n, device=device)

    print(f"command: {shlex.join([sys.executable, *sys.argv])}")
    print(
        f"torch {torch.__version__}, threads {torch.get_num_threads()}, device {device}"
        + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else "")
    )
    print(
        f"model: 784-1000-200-10 tanh MLP, n = {n:,} parameters, cross-entropy, batch {BATCH}, float32, "
        f"seed {args.seed}; warm-up {args.warmup}, repeats {args.repeats} (median)"
    )

    # first-order graph for hvp_from_graph: built once, reused by every timed call
    def build_graph() -> tuple[Tensor, ...]:
        loss = F.cross_entropy(model(inputs), targets)
        return torch.autograd.grad(loss, params, create_graph=True)

    for _ in range(args.warmup):
        build_graph()
    graph_samples = []
    for _ in range(args.repeats):
        gc.collect()
        graph_samples.append(measure(build_graph, device))
    graph_ms = statistics.median(t for t, _ in graph_samples)
    graph_peaks = [p for _, p in graph_samples if p is not None]
    grads = build_graph()

    calls: dict[str, Callable[[Tensor], Tensor]] = {
        "hvp_from_graph": lambda V: hvp_from_graph(grads, params, V),
        "hvp_functional": lambda V: hvp_functional(model, F.cross_entropy, inputs, targets, V),
        "ggn_vp": lambda V: ggn_vp(model, "cross_entropy", inputs, targets, V),
    }

    header = [
        "function",
        "m",
        "batched ms",
        "looped ms",
        "single ms",
        "batched/(m x single)",
        f"<= {TARGET}",
        "batched peak MiB",
        "looped peak MiB",
        "result MiB",
    ]
    rows = []
    for name, call in calls.items():
        for m in args.ms:
            V = V_all[:, :m].contiguous()
            cols = [V_all[:, j].contiguous() for j in range(m)]

            def batched(call=call, V=V) -> Tensor:
                return call(V)

            def looped(call=call, cols=cols) -> list[Tensor]:
                return [call(c) for c in cols]

            def single(call=call) -> Tensor:
                return call(v_single)

            res = run_case(
                {"batched": batched, "looped": looped, "single": single}, args.warmup, args.repeats, device
            )
            ratio = res["batched"].ms / (m * res["single"].ms)
            rows.append(
                [
                    name,
                    str(m),
                    f"{res['batched'].ms:.1f}",
                    f"{res['looped'].ms:.1f}",
                    f"{res['single'].ms:.1f}",
                    f"{ratio:.2f}",
                    "yes" if ratio <= TARGET else "no",
                    fmt_bytes(res["batched"].peak),
                    fmt_bytes(res["looped"].peak),
                    f"{n * m * V.element_size() / 2**20:.1f}",
                ]
            )
            print(f"  done: {name} m={m}", file=sys.stderr, flush=True)

    print()
    print_table(header, rows, args.markdown)
    print()
    print("notes:")
    print(
        f"- hvp_from_graph reuses one first-order graph (autograd.grad(..., create_graph=True)) built "
        f"outside the timed region; building it takes {graph_ms:.1f} ms"
        + (f" (peak {fmt_bytes(max(graph_peaks))} MiB)" if graph_peaks else "")
        + ". hvp_functional and ggn_vp include their forward/gradient work in every call."
    )
    print(
        "- batched: one call with V of shape (n, m); looped: m calls with V[:, j] of shape (n,); "
        "single: one call with one (n,) vector. Ratio = batched / (m x single); target <= "
        f"{TARGET}. For m = 1 the ratio only compares a (n, 1) block with a (n,) vector."
    )
    print(
        "- peak MiB: torch.cuda.max_memory_allocated above the allocation before the call (CUDA only; "
        "n/a on CPU, where no reliable per-call measure exists). result MiB: bytes of the (n, m) result."
    )


if __name__ == "__main__":
    main()
