"""Per-step cost of the quasi-Newton optimizers, split into closure time and optimizer algebra.

For every (optimizer, model) pair the script runs ``--warmup`` untimed steps and then ``--steps`` timed
steps of ``opt.step(closure)``. The closure (zero grads, forward, cross-entropy, backward) times itself
with ``time.perf_counter``; the whole ``step`` call is timed the same way around it. On CUDA both
timers are bracketed by ``torch.cuda.synchronize()``, so queued kernels are charged to the side that
launched them. Per step:

* closure ms: the summed duration of all closure calls in that step (one per forward+backward);
* algebra ms: total step time minus closure ms (everything the optimizer does itself: flattening
  parameters and gradients, the curvature algebra, the subproblem or line-search logic, host syncs).

Operation counts: after the timed steps every optimizer takes one more step under a
``lightning_sqn._device.HostReadCounter``. "ops/step" is the number of ATen operations dispatched
outside the closure (on a GPU, roughly the kernels launched: the cost that dominates when the vectors
are small), "host reads/step" the number of transfers of values back to the host (on a GPU, each one
waits for the queued kernels). The counts are the same on any device.

Reported values are medians over the timed steps; "1 f+b" is the median duration of a single closure
call, and "alg % f+b" is algebra ms as a percentage of it. "state" is the number of bytes of all
tensors reachable from ``opt.state_dict()["state"]`` (distinct storages counted once), also given in
units of one flat float32 parameter vector (n * 4 bytes).

Data: synthetic MNIST-shaped batches (N(0, 1) images 1x28x28, uniform labels over 10 classes), one
fresh batch per step (the stochastic setting); all closure calls of a step use that step's batch.
Every optimizer starts from the same initial weights and sees the same sequence of batches. The
optimizers of one model run interleaved (step k of each, in an order rotated every step, then step
k + 1), so that phases in which the machine is slower, e.g. other processes on the cores, hit all of
them alike rather than one. The garbage collector runs between rounds, not inside timed steps.

Run ``python benchmarks/step_overhead.py --help`` for the options; see ``benchmarks/README.md``.
"""

from __future__ import annotations

import argparse
import copy
import gc
import math
import os
import shlex
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import lightning_sqn
from lightning_sqn._device import HostReadCounter

# ---------------------------------------------------------------------------------------------- models


def make_mlp() -> nn.Module:
    """784-1000-200-10 ReLU MLP (987,210 parameters)."""
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(784, 1000),
        nn.ReLU(),
        nn.Linear(1000, 200),
        nn.ReLU(),
        nn.Linear(200, 10),
    )


def make_lenet() -> nn.Module:
    """LeNet-5 as in the L-SR1 paper's appendix (431,080 parameters).

    conv 5x5 20 maps, maxpool 2, conv 5x5 50 maps, maxpool 2, FC 500 tanh, FC 10; input 1x28x28.
    """
    return nn.Sequential(
        nn.Conv2d(1, 20, kernel_size=5),
        nn.MaxPool2d(2),
        nn.Conv2d(20, 50, kernel_size=5),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(50 * 4 * 4, 500),
        nn.Tanh(),
        nn.Linear(500, 10),
    )


def make_small() -> nn.Module:
    """784-32-10 ReLU MLP (25,450 parameters): vectors of 100 KB, so a step's cost is its fixed part
    (operations dispatched and host arithmetic), the regime of any model on a GPU."""
    return nn.Sequential(nn.Flatten(), nn.Linear(784, 32), nn.ReLU(), nn.Linear(32, 10))


MODELS: dict[str, Callable[[], nn.Module]] = {"mlp": make_mlp, "lenet": make_lenet, "small": make_small}

# ------------------------------------------------------------------------------------------ optimizers

OPTIMIZERS: list[tuple[str, Callable[[Any], torch.optim.Optimizer]]] = [
    ("LSR1 trust_region", lambda p: lightning_sqn.LSR1(p, memory=5, method="trust_region")),
    ("LSR1 line_search", lambda p: lightning_sqn.LSR1(p, memory=5, method="line_search")),
    ("LBFGS strong-Wolfe", lambda p: lightning_sqn.LBFGS(p, memory=5)),
    ("LBFGS line_search=None", lambda p: lightning_sqn.LBFGS(p, memory=5, line_search=None)),
    ("torch.optim.LBFGS", lambda p: torch.optim.LBFGS(p, history_size=5, max_iter=1)),
]
TORCH_REFERENCE = "torch.optim.LBFGS"

# ----------------------------------------------------------------------------------------------- state


def tensor_bytes(obj: Any, _seen: set[tuple[int, int]] | None = None) -> int:
    """Bytes of all tensors reachable from ``obj`` (dicts, lists, tuples, sets), each storage once.

    Tensors that share a storage (views) are counted once, by the size of that storage.
    """
    seen: set[tuple[int, int]] = set() if _seen is None else _seen
    if isinstance(obj, Tensor):
        storage = obj.untyped_storage()
        key = (storage.data_ptr(), storage.nbytes())
        if key in seen:
            return 0
        seen.add(key)
        if storage.data_ptr() == 0:  # empty or meta tensor: count its nominal size
            return obj.numel() * obj.element_size()
        return storage.nbytes()
    if isinstance(obj, dict):
        return sum(tensor_bytes(v, seen) for v in obj.values())
    if isinstance(obj, (list, tuple, set, frozenset)):
        return sum(tensor_bytes(v, seen) for v in obj)
    return 0


# ----------------------------------------------------------------------------------------------- timing


@dataclass
class Result:
    optimizer: str
    model: str
    numel: int
    calls: list[int] = field(default_factory=list)  # closure calls per timed step
    closure_s: list[float] = field(default_factory=list)  # summed closure time per timed step
    algebra_s: list[float] = field(default_factory=list)  # step time minus closure time
    single_fb_s: list[float] = field(default_factory=list)  # every closure call of the timed steps
    state_bytes: int = 0
    algebra_ops: int | None = None  # ATen operations outside the closure in one step (accelerator form)
    host_reads: int | None = None  # values read back to the host in that step
    error: str | None = None

    @property
    def timed_steps(self) -> int:
        return len(self.algebra_s)


def make_batches(count: int, batch: int, device: torch.device, seed: int) -> list[tuple[Tensor, Tensor]]:
    gen = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(count):
        x = torch.randn(batch, 1, 28, 28, generator=gen)
        y = torch.randint(0, 10, (batch,), generator=gen)
        out.append((x.to(device), y.to(device)))
    return out


class Runner:
    """One optimizer on its own copy of the model; :meth:`step` runs and times one optimizer step."""

    def __init__(
        self,
        opt_name: str,
        make_opt: Callable[[Any], torch.optim.Optimizer],
        model_name: str,
        init_model: nn.Module,
        device: torch.device,
    ) -> None:
        self.cuda = device.type == "cuda"
        self.device = device
        self.model = copy.deepcopy(init_model).to(device)
        self.params = list(self.model.parameters())
        self.opt = make_opt(self.params)
        self.result = Result(opt_name, model_name, sum(p.numel() for p in self.params))
        self.batch: tuple[Tensor, Tensor] | None = None
        self.call_times: list[float] = []  # durations of the closure calls of the current step
        self.counter: HostReadCounter | None = None
        self.closure_ops = 0

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize(self.device)

    def closure(self) -> Tensor:
        self.sync()
        t0 = time.perf_counter()
        for p in self.params:
            p.grad = None
        assert self.batch is not None
        x, y = self.batch
        ops0 = self.counter.ops if self.counter is not None else 0
        loss = F.cross_entropy(self.model(x), y)
        loss.backward()
        if self.counter is not None:
            self.closure_ops += self.counter.ops - ops0
        self.sync()
        self.call_times.append(time.perf_counter() - t0)
        return loss

    def step(self, k: int, batch: tuple[Tensor, Tensor], timed: bool) -> None:
        res = self.result
        if res.error is not None:
            return
        self.batch = batch
        self.call_times.clear()
        self.sync()
        t0 = time.perf_counter()
        try:
            self.opt.step(self.closure)
        except Exception as exc:  # e.g. NonFiniteLossError after a divergent fixed step
            res.error = f"step {k}: {type(exc).__name__}: {str(exc).splitlines()[0][:80]}"
            return
        self.sync()
        total = time.perf_counter() - t0
        if not timed:
            return
        closure_total = sum(self.call_times)
        res.calls.append(len(self.call_times))
        res.closure_s.append(closure_total)
        res.algebra_s.append(total - closure_total)
        res.single_fb_s.extend(self.call_times)

    def count_step(self, batch: tuple[Tensor, Tensor]) -> None:
        """One more (untimed) step, counting the ATen operations outside the closure (on a GPU: about the
        kernels launched) and the host reads."""
        if self.result.error is not None:
            return
        self.batch = batch
        self.closure_ops = 0
        with HostReadCounter() as counter:
            self.counter = counter
            try:
                self.opt.step(self.closure)
            finally:
                self.counter = None
        self.result.algebra_ops = counter.ops - self.closure_ops
        self.result.host_reads = counter.host_reads

    def finish(self) -> Result:
        self.result.state_bytes = tensor_bytes(self.opt.state_dict()["state"])
        return self.result


def run_model(
    model_name: str,
    init_model: nn.Module,
    batches: list[tuple[Tensor, Tensor]],
    warmup: int,
    device: torch.device,
) -> list[Result]:
    """All optimizers on one model, interleaved: step k of every optimizer, then step k + 1.

    Interleaving (with the order rotated every step) spreads slow phases of the machine, e.g. other
    processes competing for the cores, over all optimizers instead of one.
    """
    runners = [Runner(name, make, model_name, init_model, device) for name, make in OPTIMIZERS]
    gc.collect()
    gc.disable()  # no collector pauses inside timed steps; collect between steps instead
    try:
        for k, batch in enumerate(batches):
            shift = k % len(runners)
            for runner in runners[shift:] + runners[:shift]:
                runner.step(k, batch, timed=k >= warmup)
            gc.collect()
    finally:
        gc.enable()
    for runner in runners:
        runner.count_step(batches[-1])
    return [r.finish() for r in runners]


def pool(runs: list[list[Result]]) -> list[Result]:
    """The results of repeated runs, one per optimizer, with their timed steps pooled."""
    out = []
    for same in zip(*runs, strict=True):
        first = same[0]
        for other in same[1:]:
            first.calls += other.calls
            first.closure_s += other.closure_s
            first.algebra_s += other.algebra_s
            first.single_fb_s += other.single_fb_s
            first.error = first.error or other.error
        out.append(first)
    return out


@dataclass
class Floor:
    """The pair-buffer traffic of one limited-memory step, measured with a cold cache."""

    pass_bytes: int  # bytes one pass reads (the slots and g)
    stream_ms: float  # a plain streaming read (sum) of those bytes: the memory bandwidth
    passes_ms: float  # the step's two passes as the optimizers make them


def pass_floor(model: nn.Module, device: torch.device, memory: int = 5) -> Floor:
    """Times, with the cache flushed before each call (as the closure leaves it), a streaming read of
    the rows a pass covers and the two passes of a step (``step_products`` + ``combine_step``)."""
    from lightning_sqn.qn.memory import PairMemory

    n = sum(p.numel() for p in model.parameters())
    mem = PairMemory(memory, n, dtype=torch.float32, device=device)
    rows = mem._rows[: 2 * mem.slots + 1]  # the slots and g
    rows.normal_()
    c = torch.randn(2 * mem.slots).numpy()
    f = torch.zeros((), device=device)
    flush = torch.zeros(64 * 2**20 // 4, device=device)  # larger than the last-level cache

    def cold(fn: Callable[[], Any]) -> float:
        times = []
        for _ in range(25):
            flush.add_(1.0)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            t0 = time.perf_counter()
            fn()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            times.append(time.perf_counter() - t0)
        return statistics.median(times[5:]) * 1e3

    stream = cold(lambda: rows.sum())
    passes = cold(lambda: (mem.step_products(f), mem.combine_step(c, 0.5)))
    return Floor(rows.numel() * rows.element_size(), stream, passes)


# ----------------------------------------------------------------------------------------------- output


def _median(xs: list[float]) -> float:
    return statistics.median(xs) if xs else math.nan


def build_rows(results: list[Result]) -> tuple[list[str], list[list[str]]]:
    header = [
        "optimizer",
        "model",
        "calls/step",
        "closure ms",
        "algebra ms",
        "alg ms / eval",
        "1 f+b ms",
        "alg % f+b",
        "alg / torch",
        "state MiB",
        "state (n*4 B)",
        "ops/step",
        "host reads/step",
    ]
    torch_alg = {
        r.model: _median(r.algebra_s) for r in results if r.optimizer == TORCH_REFERENCE and r.algebra_s
    }
    rows = []
    for r in results:
        alg = _median(r.algebra_s)
        per_eval = _median([a / c for a, c in zip(r.algebra_s, r.calls, strict=False) if c > 0])
        fb = _median(r.single_fb_s)
        ref = torch_alg.get(r.model, math.nan)
        name = r.optimizer
        if r.error is not None:
            name += f" [stopped after {r.timed_steps} timed steps: {r.error}]"
        rows.append(
            [
                name,
                f"{r.model} ({r.numel:,})",
                f"{statistics.fmean(r.calls):.2f}" if r.calls else "-",
                f"{_median(r.closure_s) * 1e3:.2f}",
                f"{alg * 1e3:.2f}",
                f"{per_eval * 1e3:.2f}",
                f"{fb * 1e3:.2f}",
                f"{100 * alg / fb:.1f}%" if fb > 0 else "-",
                f"{alg / ref:.2f}x" if ref > 0 else "-",
                f"{r.state_bytes / 2**20:.2f}",
                f"{r.state_bytes / (4 * r.numel):.2f}",
                "-" if r.algebra_ops is None else str(r.algebra_ops),
                "-" if r.host_reads is None else str(r.host_reads),
            ]
        )
    return header, rows


def format_text(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
    right = [False, False] + [True] * (len(header) - 2)

    def line(cells: list[str]) -> str:
        return "  ".join(
            c.rjust(w) if r else c.ljust(w) for c, w, r in zip(cells, widths, right, strict=True)
        ).rstrip()

    sep = "  ".join("-" * w for w in widths)
    return "\n".join([line(header), sep, *(line(r) for r in rows)])


def format_markdown(header: list[str], rows: list[list[str]]) -> str:
    aligns = ["---", "---"] + ["---:"] * (len(header) - 2)
    out = ["| " + " | ".join(header) + " |", "| " + " | ".join(aligns) + " |"]
    out += ["| " + " | ".join(c.replace("|", "\\|") for c in r) + " |" for r in rows]
    return "\n".join(out)


# ------------------------------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Per-step closure time vs optimizer algebra of lightning_sqn and torch.optim.LBFGS."
    )
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--steps", type=int, default=20, help="timed steps per run (default 20)")
    p.add_argument(
        "--warmup", type=int, default=5, help="untimed steps first; 5 fills the memory=5 buffer (default 5)"
    )
    p.add_argument("--batch", type=int, default=400, help="mini-batch size (default 400)")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    p.add_argument("--models", default="mlp,lenet,small", help="comma-separated subset of: mlp,lenet,small")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--repeats",
        type=int,
        default=3,
        help="independent interleaved runs per model; the timed steps of all are pooled (default 3)",
    )
    p.add_argument("--markdown", action="store_true", help="print a markdown table")
    args = p.parse_args(argv)
    args.models = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = [m for m in args.models if m not in MODELS]
    if unknown or not args.models:
        p.error(f"--models must be a comma-separated subset of {','.join(MODELS)}, got {unknown}")
    if args.steps < 1 or args.warmup < 0 or args.batch < 1 or args.repeats < 1:
        p.error("--steps, --batch and --repeats must be >= 1 and --warmup >= 0")
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda was given but torch.cuda.is_available() is False")
    return args


class OtherLoad:
    """CPU time used by *other* processes while a block runs (Linux ``/proc/stat``), in cores.

    Busy CPU time of the whole machine minus this process's own CPU time, divided by wall time: about 0
    on an otherwise idle machine; on 2 cores, 1.0 means another process kept one core busy throughout.
    """

    def __init__(self) -> None:
        self.cores: float | None = None

    @staticmethod
    def _machine_busy_s() -> float | None:
        try:
            with open("/proc/stat") as f:
                fields = f.readline().split()
        except OSError:
            return None
        if not fields or fields[0] != "cpu":
            return None
        user, nice, system, _idle, _iowait, irq, softirq, steal = (int(v) for v in fields[1:9])
        return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")

    def __enter__(self) -> OtherLoad:
        self._busy0, self._own0, self._t0 = self._machine_busy_s(), _own_cpu_s(), time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        busy1, own1, t1 = self._machine_busy_s(), _own_cpu_s(), time.perf_counter()
        if self._busy0 is not None and busy1 is not None and t1 > self._t0:
            self.cores = max(0.0, (busy1 - self._busy0) - (own1 - self._own0)) / (t1 - self._t0)


def _own_cpu_s() -> float:
    t = os.times()
    return t.user + t.system


def _loadavg() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:  # not available on this platform
        return "n/a"


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    dev_desc = str(device)
    if device.type == "cuda":
        dev_desc += f" ({torch.cuda.get_device_name(device)})"

    command = "python " + shlex.join(sys.argv if argv is None else [sys.argv[0], *argv])
    meta = [
        f"command: {command}",
        f"torch {torch.__version__}, lightning_sqn {lightning_sqn.__version__}, "
        f"python {sys.version.split()[0]}",
        f"device: {dev_desc}, threads: {torch.get_num_threads()}, os.cpu_count(): {os.cpu_count()}, "
        f"load average at start: {_loadavg()}",
        f"batch {args.batch}, float32, cross-entropy, seed {args.seed}, {args.repeats} repeats of warmup "
        f"{args.warmup} + {args.steps} timed steps, medians over the pooled timed steps, one fresh synthetic "
        "batch per step",
    ]
    if args.markdown:
        print("\n".join(f"- {m}" if i else f"- `{m.split(': ', 1)[1]}`" for i, m in enumerate(meta)))
    else:
        print("\n".join(meta))
    print(flush=True)

    torch.manual_seed(args.seed)
    results: list[Result] = []
    other_load: dict[str, float | None] = {}
    floors: dict[str, Floor] = {}
    for mi, model_name in enumerate(args.models):
        torch.manual_seed(args.seed + mi)
        init_model = MODELS[model_name]().float()
        batches = make_batches(args.warmup + args.steps, args.batch, device, args.seed + 1000 + mi)
        with OtherLoad() as load:
            runs = [
                run_model(model_name, init_model, batches, args.warmup, device) for _ in range(args.repeats)
            ]
        results.extend(pool(runs))
        other_load[model_name] = load.cores
        floors[model_name] = pass_floor(init_model, device)
        print(f"  done: {model_name}", file=sys.stderr, flush=True)

    header, rows = build_rows(results)
    print(format_markdown(header, rows) if args.markdown else format_text(header, rows))
    print()
    notes = [
        "calls/step: closure calls (forward+backward) per step, mean over timed steps.",
        "closure ms / algebra ms: median per step; algebra = step time - closure time; alg ms / eval: "
        "the median of each step's algebra divided by its closure calls (a line search that takes more "
        "trial points pays per evaluation).",
        "1 f+b ms: median time of one closure call; alg % f+b = algebra ms / 1 f+b ms.",
        f"alg / torch: algebra ms relative to {TORCH_REFERENCE} (history_size=5, max_iter=1) on the "
        "same model.",
        "state: bytes of tensors reachable from opt.state_dict()['state']; n*4 B = one float32 "
        "parameter vector.",
        "optimizers run interleaved: step k of each (in rotating order), then step k + 1.",
        "ops/step, host reads/step: ATen operations outside the closure and transfers of values to the host "
        "in one extra step (lightning_sqn._device.HostReadCounter; on a GPU each operation is about one "
        "kernel launch and each read a synchronisation).",
    ]
    for m, fl in floors.items():
        mib, gbs = fl.pass_bytes / 2**20, fl.pass_bytes / fl.stream_ms / 1e6
        notes.append(
            f"floor ({m}): a pass reads the 2(m + 1) = 12 slot rows and g ({mib:.1f} MiB); a plain streaming "
            f"read of them takes {fl.stream_ms:.2f} ms from a cold cache ({gbs:.1f} GB/s), so a step's two "
            f"passes cost at least {2 * fl.stream_ms:.2f} ms; the passes as the "
            f"optimizers make them (batched products) take {fl.passes_ms:.2f} ms. The rest of a step is "
            "n-vector work (gradient and parameter copies, y, the staged s, x + s) and host arithmetic."
        )
    loads = ", ".join(f"{m} {'n/a' if c is None else f'{c:.2f}'}" for m, c in other_load.items())
    notes.append(
        f"CPU cores used by other processes during the runs: {loads} (of {os.cpu_count()}; above ~0.1 the "
        f"timings are distorted); load average at end: {_loadavg()}."
    )
    print("\n".join(f"- {n}" if args.markdown else n for n in notes))


if __name__ == "__main__":
    main()
