"""Strategies owns `make compare-strategies`: data, hybrid and parameter-server training, side by side.

Run:  python -m benchmarks.strategies [--np 4] [--epochs 12] [--steps 20]

Every strategy runs on the same N processes (default 4) with the same global batch (48), so
each optimizer step takes the same samples:

* ``allreduce``: synchronous data parallelism with Horovod's ring-allreduce, N workers
  (the MNIST recipe; for ResNet-18, ``hybrid_parallel.py --stages 1``, the same thing);
* ``hybrid``: 2 pipeline stages x N/2 replicas, 2 micro-batches (``hybrid_parallel.py``);
* ``ps sync``: 1 parameter server and N-1 workers (``parameter_server.py --mode sync``);
* ``ps async K``: the same, ``--mode async --max-staleness K`` for K in 0, 2, 8.

Two measurements of each:

1. the MNIST CNN on the bundled digits for ``--epochs`` epochs with the LR unscaled (the same
   LR for the same global batch everywhere): final val accuracy, and val accuracy against
   samples seen (each epoch's record). The synchronous strategies train the same model (the
   tests hold them to 1e-5); async ones do not.
2. ResNet-18 (11.2 M parameters) on random 3x32x32 images for ``--steps`` steps:
   samples/s, each rank's mean step time and the part of it spent communicating, and the
   bytes each rank sent per step (counted from the messages for the pipeline and the servers;
   for Horovod's allreduce, whose messages are not visible, the ring's 2(N-1)/N x gradients).

Each row also gets the analytic traffic per step for comparison: ring allreduce 2(N-1)/N x
model bytes per worker; hybrid: a ring over the R replicas of each stage's gradients, plus the
activations (forward) or their gradients (backward) at the stage boundary; parameter server:
the model's gradient pushed by each worker, and W x its share of the model sent by the server
(the pulls). Output: a Markdown table,
``strategies.json`` and ``strategies.png`` (throughput per strategy; accuracy against samples
seen) in ``--out``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks.bench import BIN, last_line, launch_env, mpirun_command, run_side_by_side
from common.world.runtime import cpu_cores

GLOBAL_BATCH = 48


@dataclass
class Strategy:
    name: str
    recipe: str
    flags: list[str]
    batch: int  # per worker (allreduce), per replica (hybrid), per worker (ps)
    results: dict = field(default_factory=dict)


def strategies(n: int) -> list[Strategy]:
    hybrid_r = n // 2
    ps_w = n - 1
    rows = [
        Strategy("allreduce (Horovod)", "recipes/pytorch/mnist.py", [], GLOBAL_BATCH // n),
        Strategy(f"hybrid 2 stages x {hybrid_r}", "recipes/pytorch/hybrid_parallel.py",
                 ["--stages", "2", "--micro-batches", "2"], GLOBAL_BATCH // hybrid_r),
        Strategy("ps sync", "recipes/pytorch/parameter_server.py", ["--mode", "sync"],
                 GLOBAL_BATCH // ps_w),
    ]
    rows += [Strategy(f"ps async K={k}", "recipes/pytorch/parameter_server.py",
                      ["--mode", "async", "--max-staleness", str(k)], GLOBAL_BATCH // ps_w)
             for k in (0, 2, 8)]
    return rows


def analytic_bytes(s: Strategy, n: int) -> str:
    """The traffic per step a textbook gives for the strategy on ResNet-18, in MB per rank."""
    import torch

    from common.strategies.pipeline import partition
    from recipes.pytorch.models import resnet18

    model = resnet18(3)
    total = sum(p.numel() for p in model.parameters()) * 4 / 1e6
    if s.name.startswith("allreduce"):
        return f"worker {2 * (n - 1) / n * total:.2f}"
    if s.name.startswith("hybrid"):
        r = n // 2
        first, second = partition(model, 2)
        stage0 = sum(p.numel() for name in first for p in getattr(model, name).parameters())
        model.eval()
        with torch.no_grad():
            x = torch.zeros(1, 3, 32, 32)
            for name in first:
                x = getattr(model, name)(x)
        act = s.batch * x.numel() * 4 / 1e6  # activations forward = their gradients back
        ring = 2 * (r - 1) / r
        return (f"stage 0 {ring * stage0 * 4 / 1e6 + act:.2f}, "
                f"stage 1 {ring * (total - stage0 * 4 / 1e6) + act:.2f}")
    w = n - 1
    return f"worker {total:.2f}, server {w * total:.2f}"


def run(s: Strategy, n: int, flags: list[str], env: dict, timeout: float, work: Path) -> dict:
    path = work / f"{abs(hash((s.name, tuple(flags))))}.jsonl"
    recipe = s.recipe
    if s.name.startswith("allreduce") and "--model" in flags:  # the MNIST recipe has no ResNet
        recipe, flags = "recipes/pytorch/hybrid_parallel.py", ["--stages", "1", *flags]
    cmd = [*mpirun_command(n), "-bind-to", "none", str(BIN / "python"), recipe, *s.flags, *flags,
           "--batch-size", str(s.batch), "--checkpoint-dir", "", "--no-progress"]
    try:
        ((code, text),) = run_side_by_side([cmd], [path], env, timeout)
    except TimeoutError as e:
        return {"error": str(e)}
    records = [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
    finals = [r for r in records if r.get("type") == "final"]
    if code or not finals:
        return {"error": f"exit {code}: {last_line(text)}"}
    return {"final": finals[-1], "epochs": [r for r in records if r.get("type") == "epoch"]}


def summarise(rows: list[Strategy], n: int) -> list[dict]:
    out = []
    first = rows[0] if rows and rows[0].name.startswith("allreduce") else None
    base = first.results.get("resnet", {}).get("final", {}).get("samples_per_sec") if first else None
    for s in rows:
        d = {"name": s.name, "recipe": s.recipe, "flags": s.flags, "batch": s.batch}
        cnn, resnet = s.results.get("cnn", {}), s.results.get("resnet", {})
        d["error"] = cnn.get("error") or resnet.get("error") or ""
        if "final" in cnn:
            f = cnn["final"]
            d["cnn_val_accuracy"] = f["val_accuracy"]
            d["cnn_samples_per_sec"] = f["samples_per_sec"]
            d["cnn_curve"] = [(e["step"] * GLOBAL_BATCH, e["val_accuracy"]) for e in cnn["epochs"]]
            d["staleness_mean"] = f.get("staleness_mean")
            d["staleness_max"] = f.get("staleness_max")
        if "final" in resnet:
            f = resnet["final"]
            d["resnet_samples_per_sec"] = f["samples_per_sec"]
            d["vs_allreduce"] = f["samples_per_sec"] / base if base else None
            d["roles"] = f["roles"]
            d["bytes_sent_per_step_by_rank"] = f["bytes_sent_per_step_by_rank"]
            d["step_s_by_rank"] = f["step_s_by_rank"]
            d["comm_s_by_rank"] = f["comm_s_by_rank"]
            d["comm_share"] = sum(f["comm_s_by_rank"]) / max(sum(f["step_s_by_rank"]), 1e-12)
            d["analytic_mb"] = analytic_bytes(s, n)
        out.append(d)
    return out


def _mb_by_role(d: dict) -> str:
    by_role: dict[str, list[float]] = {}
    for role, b in zip(d["roles"], d["bytes_sent_per_step_by_rank"], strict=True):
        by_role.setdefault(role, []).append(b / 1e6)
    return ", ".join(f"{role} {max(v):.2f}" for role, v in by_role.items())


def _row(d: dict) -> str:
    if not d.get("resnet_samples_per_sec"):
        return f"| {d['name']} | failed: {d['error']} | | | | | | | |"
    ratio = "" if d["vs_allreduce"] is None else f"{d['vs_allreduce']:.2f}x"
    stale = ("" if d.get("staleness_max") is None else
             f"{d['staleness_mean']:.2f} / {d['staleness_max']}")
    acc, cnn_rate = d.get("cnn_val_accuracy"), d.get("cnn_samples_per_sec")
    step = sum(d["step_s_by_rank"]) / len(d["step_s_by_rank"])
    comm = sum(d["comm_s_by_rank"]) / len(d["comm_s_by_rank"])
    return (f"| {d['name']} | {d['resnet_samples_per_sec']:.1f} | {ratio} | {_mb_by_role(d)} | "
            f"{d['analytic_mb']} | {step:.3f} = {step - comm:.3f} + {comm:.3f} "
            f"({100 * d['comm_share']:.0f}%) | "
            f"{'failed' if acc is None else f'{acc:.4f}'} | "
            f"{'' if cnn_rate is None else f'{cnn_rate:,.0f}'} | {stale} |")


def table(summary: list[dict]) -> str:
    lines = ["| strategy | ResNet-18 samples/s | vs allreduce | MB sent per step per rank (measured) "
             "| analytic MB per step | step s = compute + communication (mean of ranks) "
             "| CNN val accuracy | CNN samples/s "
             "| staleness mean / max |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    return "\n".join(lines + [_row(d) for d in summary])


def chart(summary: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (bars, curves) = plt.subplots(1, 2, figsize=(12, 4.8))
    names = [d["name"] for d in summary]
    bars.bar(range(len(summary)), [d.get("resnet_samples_per_sec") or 0 for d in summary],
             color=["C0", "C1", "C2", "C3", "C4", "C5"][: len(summary)])
    bars.set_xticks(range(len(summary)), names, rotation=30, ha="right", fontsize=8)
    bars.set_ylabel("samples/s (all ranks)")
    bars.set_title("ResNet-18, 32 px, synthetic: throughput")
    for d in summary:
        if d.get("cnn_curve"):
            seen, acc = zip(*d["cnn_curve"], strict=True)
            curves.plot(seen, acc, marker=".", label=d["name"])
    curves.set_xlabel("training samples seen")
    curves.set_ylabel("val accuracy")
    curves.set_title("MNIST CNN on digits: accuracy against samples seen")
    curves.legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--np", type=int, default=4, help="processes per strategy (even, >= 4)")
    p.add_argument("--epochs", type=int, default=12, help="MNIST CNN epochs per strategy")
    p.add_argument("--steps", type=int, default=20, help="ResNet-18 steps per strategy")
    p.add_argument("--base-lr", type=float, default=0.075,
                   help="LR of the global batch of 48 (unscaled; the MNIST recipe's 0.05 per "
                        "32 samples)")
    p.add_argument("--only", action="append", metavar="NAME",
                   help="run only strategies whose name starts with NAME (repeatable)")
    p.add_argument("--timeout", type=float, default=900, help="seconds allowed for one run")
    p.add_argument("--out", default="runs/strategies", help="folder for the JSON and PNG")
    a = p.parse_args(argv)
    if a.np < 4 or a.np % 2 or GLOBAL_BATCH % (a.np - 1) or GLOBAL_BATCH % a.np:
        p.error(f"--np must be even, at least 4, and it and np-1 must divide {GLOBAL_BATCH}")
    if a.epochs < 1 or a.steps < 2:
        p.error("--epochs must be >= 1 and --steps >= 2")
    return a


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    env = launch_env()
    rows = [s for s in strategies(a.np) if not a.only or s.name.startswith(tuple(a.only))]
    cnn = ["--epochs", str(a.epochs), "--lr-scaling", "none", "--base-lr", str(a.base_lr)]
    resnet = ["--model", "resnet18", "--synthetic", str(GLOBAL_BATCH * (a.steps + 2)),
              "--epochs", "1", "--max-steps", str(a.steps), "--lr-scaling", "none",
              "--base-lr", str(a.base_lr)]
    print(f"compare-strategies: {len(rows)} strategies on {a.np} processes, {cpu_cores()} cores, "
          f"global batch {GLOBAL_BATCH}", flush=True)
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="strategies-") as tmp:
        for s in rows:
            for key, flags in (("cnn", cnn), ("resnet", resnet)):
                s.results[key] = run(s, a.np, flags, env, a.timeout, Path(tmp))
                r = s.results[key]
                got = (f"FAILED ({r['error']})" if "error" in r else
                       f"{r['final']['samples_per_sec']:.1f} samples/s, val accuracy "
                       f"{r['final']['val_accuracy']:.4f}")
                print(f"  {s.name}, {key}: {got}", flush=True)
    summary = summarise(rows, a.np)
    title = (f"{a.np} processes on {cpu_cores()} cores, global batch {GLOBAL_BATCH}, "
             f"{time.strftime('%Y-%m-%d')}")
    text = table(summary)
    print(f"\n{title}\n\n{text}\n")
    result = {"date": time.strftime("%Y-%m-%d"), "settings": vars(a), "cores": cpu_cores(),
              "global_batch": GLOBAL_BATCH, "seconds": round(time.monotonic() - t0),
              "rows": summary}
    (out / "strategies.json").write_text(json.dumps(result, indent=1) + "\n")
    chart(summary, out / "strategies.png", title)
    print(f"wrote {out / 'strategies.json'} and {out / 'strategies.png'}")
    return 1 if any(d["error"] for d in summary) else 0


if __name__ == "__main__":
    sys.exit(main())
