"""Bench owns `make bench`: every launch of the synthetic benchmarks side by side with its ceiling and DDP.

Run:  python -m benchmarks.bench [--np 2] [--model resnet18] [--batch-size 16] [--rounds 2]

In one invocation, on this machine, with the environment as the user has it:

* ``ceiling``: N plain single-process PyTorch loops side by side (``benchmarks.torch_baseline``),
  each on cores / N threads: what N workers could do if distributing cost nothing;
* the PyTorch synthetic benchmark recipe at ``-np N`` under ``horovodrun`` (default
  controller), ``horovodrun --gloo`` and ``mpirun``;
* ``torchrun`` DDP: the same model, batch, threads and timing in PyTorch's
  DistributedDataParallel over gloo (``benchmarks.torch_baseline`` under torchrun);
* TensorFlow: N plain loops side by side (``benchmarks.tf_baseline``) and the TensorFlow
  synthetic benchmark recipe at ``-np N`` under ``horovodrun``, its custom loop's step and
  Keras 3's ``model.fit`` (``--keras-fit``, the core's distributed Keras optimizer);
* the CIFAR ResNet recipe's whole training loop (data loading, augmentation, metrics; no
  checkpoints) on generated CIFAR-format data at np=1 and np=N: its scaling efficiency;
* ``compile``: the PyTorch recipe with ``--compile`` (torch.compile) and the same run eager, its
  reference, in the same round: what compiling buys (the warm-up batches take the compilation).
* ``saving``: the ImageNet recipe's ResNet-50 (a state of about 190 MB: weights and momentum) on
  generated image folders, one epoch with no checkpoints, then ``--checkpoint-steps`` with
  ``--checkpoint-mode sync`` and ``async``: the training throughput of each, and the pause per
  checkpoint (the time a save held rank 0's loop, from the final record) as a share of one step
  of the run without checkpoints in the same round.

Every row runs ``--rounds`` times, interleaved (round 1 of every row, then round 2, ...) so a
slow spell of the machine hits every row alike. The table reports each row's median, and each
ratio (share of the ceiling, ratio to DDP, scaling efficiency) as the median of the ratios taken
within one round. The result is printed as a Markdown table and written as JSON and a PNG bar
chart to ``--out``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from common.world.runtime import cpu_cores

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
# Runtime settings that change what is measured: recorded with the result when the user set any.
TUNING_PREFIXES = ("HOROVOD_", "OMPI_MCA_", "OMP_", "GLOO_", "MKL_", "KMP_")


@dataclass
class Row:
    """One measured configuration: how to launch it and what each round gave (samples/s)."""

    name: str
    group: str  # "pytorch", "tensorflow" or "cifar": a row is compared within its group
    commands: list[list[str]]  # run side by side; the row's rate is the sum of theirs
    record: str  # the JSON record type holding the rate: "benchmark" or "epoch"
    rates: list[float] = field(default_factory=list)
    error: str = ""
    records: list[dict] = field(default_factory=list)  # each round's record (its first command's)
    checkpoint_dir: Path | None = None  # emptied after each run (a rerun would resume)
    samples_per_step: int = 0  # all workers' (the saving rows: a step's time from the rate)

    @property
    def rate(self) -> float | None:
        return statistics.median(self.rates) if self.rates else None


def launch_env() -> dict[str, str]:
    """The user's environment, with this checkout and its virtual environment first."""
    return dict(os.environ, PYTHONPATH=f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
                PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", PYTHONUNBUFFERED="1")


def mpirun_command(n: int) -> list[str]:
    """``mpirun -np N`` as this machine needs it (root, more ranks than cores)."""
    cmd = ["mpirun", "-np", str(n)]
    if os.geteuid() == 0:
        cmd.append("--allow-run-as-root")
    if n > cpu_cores():
        cmd.append("--oversubscribe")
    return cmd


SAVING_MODES = ("none", "sync", "async")


def saving_rows(a: argparse.Namespace, image_dir: Path, work: Path) -> list[Row]:
    """The ``saving`` group: one epoch of the ImageNet recipe without checkpoints, then with
    one every ``--saving-every`` steps written synchronously and in the background."""
    recipe = [str(BIN / "horovodrun"), "-np", str(a.np), str(BIN / "python"),
              "recipes/pytorch/imagenet_resnet50.py", "--train-dir", str(image_dir / "train"),
              "--val-dir", str(image_dir / "val"), "--model", a.saving_model, "--image-size",
              str(a.saving_image_size), "--batch-size", str(a.saving_batch_size), "--epochs", "1",
              "--data-workers", "0", "--threads-per-worker", str(a.threads), "--no-progress",
              "--keep-checkpoints", "1"]
    rows = []
    for mode in SAVING_MODES:
        folder = work / f"saving-{mode}"
        flags = (["--checkpoint-dir", ""] if mode == "none" else
                 ["--checkpoint-dir", str(folder), "--checkpoint-epochs", "0",
                  "--checkpoint-steps", str(a.saving_every), "--checkpoint-mode", mode])
        name = ("saving: no checkpoints" if mode == "none" else
                f"saving: --checkpoint-steps {a.saving_every}, {mode}")
        rows.append(Row(name, "saving", [[*recipe, *flags]], "final",
                        checkpoint_dir=None if mode == "none" else folder,
                        samples_per_step=a.np * a.saving_batch_size))
    return rows


def build_rows(a: argparse.Namespace, data_dir: str) -> list[Row]:
    n, py = a.np, str(BIN / "python")
    threads = ["--threads-per-worker", str(a.threads)]
    timing = ["--num-warmup-batches", str(a.warmup), "--num-iters", str(a.iters),
              "--num-batches-per-iter", str(a.batches_per_iter), "--image-size", str(a.image_size),
              "--batch-size", str(a.batch_size)]
    torch_recipe = ["recipes/pytorch/synthetic_benchmark.py", "--model", a.model, *timing, *threads,
                    "--no-progress"]
    baseline = ["--model", a.model, *timing, "--threads", str(a.threads)]
    tf_recipe = ["recipes/tensorflow/synthetic_benchmark.py", "--model", a.tf_model, *timing,
                 *threads, "--no-progress"]
    tf_plain = ["-m", "benchmarks.tf_baseline", "--model", a.tf_model, *timing,
                "--threads", str(a.threads)]
    horovodrun = [str(BIN / "horovodrun"), "-np", str(n)]
    cifar = ["recipes/pytorch/cifar10_resnet.py", "--data-dir", data_dir, "--depth", str(a.cifar_depth),
             "--epochs", "1", "--max-steps", str(a.cifar_steps), "--batch-size",
             str(a.cifar_batch_size), "--checkpoint-dir", "", *threads, "--no-progress"]
    return [
        Row("ceiling: plain PyTorch x N side by side", "pytorch",
            [[py, "-m", "benchmarks.torch_baseline", *baseline] for _ in range(n)], "benchmark"),
        Row("horovodrun (default)", "pytorch", [[*horovodrun, py, *torch_recipe]], "benchmark"),
        Row("horovodrun --gloo", "pytorch", [[*horovodrun, "--gloo", py, *torch_recipe]],
            "benchmark"),
        Row("mpirun", "pytorch", [[*mpirun_command(n), py, *torch_recipe]], "benchmark"),
        Row("horovodrun --compile", "compile", [[*horovodrun, py, *torch_recipe, "--compile"]],
            "benchmark"),
        Row("horovodrun, eager (as --compile's reference)", "compile",
            [[*horovodrun, py, *torch_recipe]], "benchmark"),
        Row("torchrun DDP (gloo)", "pytorch",
            [[str(BIN / "torchrun"), "--nproc_per_node", str(n), "-m", "benchmarks.torch_baseline",
              *baseline]],
            "benchmark"),
        Row("ceiling: plain TensorFlow x N side by side", "tensorflow",
            [[py, *tf_plain] for _ in range(n)], "benchmark"),
        Row("horovodrun TensorFlow (default)", "tensorflow", [[*horovodrun, py, *tf_recipe]],
            "benchmark"),
        Row("horovodrun TensorFlow, Keras 3 model.fit", "tensorflow",
            [[*horovodrun, py, *tf_recipe, "--keras-fit"]], "benchmark"),
        Row("CIFAR recipe, np=1", "cifar", [[str(BIN / "horovodrun"), "-np", "1", py, *cifar]],
            "epoch"),
        Row("CIFAR recipe, np=N", "cifar", [[*horovodrun, py, *cifar]], "epoch"),
    ]


def run_side_by_side(commands: list[list[str]], files: list[Path], env: dict[str, str],
                     timeout: float) -> list[tuple[int, str]]:
    """Start every command (each with ``--metrics-file`` its file) at once and wait for all:
    their (exit status, output). On ``timeout`` seconds every launcher and every worker it
    started is killed and TimeoutError raised."""
    procs = []
    for cmd, path in zip(commands, files, strict=True):
        path.unlink(missing_ok=True)
        procs.append(subprocess.Popen([*cmd, "--metrics-file", str(path)], cwd=ROOT, env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                      start_new_session=True))
    outputs = []
    deadline = time.monotonic() + timeout
    for p in procs:
        try:
            outputs.append(p.communicate(timeout=max(deadline - time.monotonic(), 1))[0])
        except subprocess.TimeoutExpired:
            for q in procs:  # the launcher and every worker it started
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(q.pid, signal.SIGKILL)
            raise TimeoutError(f"timed out after {timeout:.0f} s") from None
    return [(p.returncode, text) for p, text in zip(procs, outputs, strict=True)]


def last_line(text: str) -> str:
    return ([ln for ln in text.splitlines() if ln.strip()][-1:] or ["no output"])[0][:200]


def run_row(row: Row, env: dict[str, str], timeout: float, work: Path) -> None:
    """Run the row's commands side by side once; add the sum of their rates to ``row.rates``
    and the first command's record (with its checkpoint's size) to ``row.records``."""
    files = [work / f"{abs(hash(row.name))}-{len(row.rates)}-{i}.jsonl" for i in range(len(row.commands))]
    try:
        finished = run_side_by_side(row.commands, files, env, timeout)
    except TimeoutError as e:
        row.error = str(e)
        return
    total, kept = 0.0, []
    for (code, text), path in zip(finished, files, strict=True):
        found = [r for r in read_records(path) if r.get("type") == row.record]
        if code or not found:
            row.error = f"exit {code}: {last_line(text)}"
            return
        total += found[-1]["img_per_sec_total" if row.record == "benchmark" else "samples_per_sec"]
        kept.append(dict(found[-1]))
    record = kept[0]
    if record.get("checkpoint") and os.path.exists(record["checkpoint"]):
        record["checkpoint_mb"] = os.path.getsize(record["checkpoint"]) / 1e6
    if row.checkpoint_dir is not None:  # the next round starts afresh
        shutil.rmtree(row.checkpoint_dir, ignore_errors=True)
    row.records.append(record)
    row.rates.append(total)


def read_records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def _ratio(rates: list[float], refs: list[float] | None, scale: float = 1.0) -> float | None:
    """The median over rounds of rate / (scale x reference) taken in the same round (the
    machine's speed drifts between rounds; within a round every row sees the same machine)."""
    if not rates or not refs or len(refs) != len(rates):
        return None
    return statistics.median(r / (scale * ref) for r, ref in zip(rates, refs, strict=True))


def summarise(rows: list[Row], n: int) -> list[dict]:
    """Each row's median, its share of its group's ceiling and its ratio to DDP (PyTorch rows),
    each the median of that round's ratio."""
    ceiling = {r.group: r.rates for r in rows if r.name.startswith("ceiling")}
    ddp = next((r.rates for r in rows if r.name.startswith("torchrun")), None)
    single = next((r.rates for r in rows if r.name == "CIFAR recipe, np=1"), None)
    eager = next((r.rates for r in rows if r.group == "compile" and r.name != "horovodrun --compile"),
                 None)
    out = []
    for r in rows:
        d = {"name": r.name, "group": r.group, "rate": r.rate, "rounds": r.rates, "error": r.error,
             "commands": [" ".join(c) for c in r.commands]}
        if not r.name.startswith("ceiling") and (v := _ratio(r.rates, ceiling.get(r.group))):
            d["of_ceiling"] = v
        if (r.group == "pytorch" and not r.name.startswith(("ceiling", "torchrun"))
                and (v := _ratio(r.rates, ddp))):
            d["vs_ddp"] = v
        if r.name == "horovodrun --compile" and (v := _ratio(r.rates, eager)):
            d["vs_eager"] = v
        if r.name == "CIFAR recipe, np=N" and (v := _ratio(r.rates, single, n)):
            d["scaling_efficiency"] = v
        if r.group == "saving":
            d.update(saving_figures(r, rows))
        out.append(d)
    return out


def saving_figures(row: Row, rows: list[Row]) -> dict:
    """A ``saving`` row against the run without checkpoints of the same round: throughput
    ratio, pause per checkpoint (s and share of that run's step), and for async, how many
    times shorter its pause is than sync's; each the median over rounds."""
    none = next(r for r in rows if r.group == "saving" and r.checkpoint_dir is None)
    sync = next((r for r in rows if r.name.endswith(", sync")), None)
    d: dict = {}
    if row is not none and (v := _ratio(row.rates, none.rates)):
        d["vs_none"] = v
    if not row.records or "checkpoints" not in row.records[0]:
        return d
    pauses = [rec["checkpoint_pause_s"] / rec["checkpoints"] for rec in row.records]
    d["pause_s"] = statistics.median(pauses)
    d["pause_max_s"] = statistics.median(rec["checkpoint_pause_max_s"] for rec in row.records)
    d["final_wait_s"] = statistics.median(rec["checkpoint_final_wait_s"] for rec in row.records)
    d["checkpoint_mb"] = row.records[0].get("checkpoint_mb")
    if len(none.rates) == len(pauses):  # one step of the run without checkpoints, that round
        d["pause_share_of_step"] = statistics.median(
            p / (row.samples_per_step / rate) for p, rate in zip(pauses, none.rates, strict=True))
    if sync is not None and row is not sync and sync.records and len(sync.records) == len(pauses):
        d["pause_cut_vs_sync"] = statistics.median(
            (s["checkpoint_pause_s"] / s["checkpoints"]) / p
            for s, p in zip(sync.records, pauses, strict=True))
    return d


def _label(name: str, n: int) -> str:
    return name.replace("x N", f"x {n}").replace("np=N", f"np={n}")


def table(summary: list[dict], n: int) -> str:
    def pct(v):
        return f"{100 * v:.0f}%" if v is not None else ""

    lines = ["| run | samples/s (median) | rounds | of ceiling | vs DDP (compile: vs eager) | "
             "scaling efficiency |", "|---|---|---|---|---|---|"]
    for d in summary:
        name = _label(d["name"], n)
        rate = f"{d['rate']:.1f}" if d["rate"] else f"failed: {d['error']}"
        rounds = ", ".join(f"{v:.1f}" for v in d["rounds"])
        vs = f"{d['vs_ddp']:.2f}x" if "vs_ddp" in d else (
            f"{d['vs_eager']:.2f}x" if "vs_eager" in d else "")
        lines.append(f"| {name} | {rate} | {rounds} | {pct(d.get('of_ceiling'))} | {vs} | "
                     f"{pct(d.get('scaling_efficiency'))} |")
    return "\n".join(lines)


def saving_table(summary: list[dict]) -> str:
    """The ``saving`` rows: throughput against no checkpoints, and the pause per checkpoint."""
    def num(d: dict, key: str, fmt: str, unit: str = "") -> str:
        return f"{format(d[key], fmt)}{unit}" if d.get(key) is not None else ""

    lines = ["| checkpoints | samples/s (median) | vs none | pause per checkpoint | of a step | "
             "pause cut vs sync | end's wait for the last write | checkpoint |",
             "|---|---|---|---|---|---|---|---|"]
    for d in (d for d in summary if d["group"] == "saving"):
        rate = f"{d['rate']:.2f}" if d["rate"] else f"failed: {d['error']}"
        lines.append(
            f"| {d['name'].removeprefix('saving: ')} | {rate} | {num(d, 'vs_none', '.3f')} | "
            f"{num(d, 'pause_s', '.3f', ' s')} | {num(d, 'pause_share_of_step', '.0%')} | "
            f"{num(d, 'pause_cut_vs_sync', '.1f', 'x')} | {num(d, 'final_wait_s', '.2f', ' s')} | "
            f"{num(d, 'checkpoint_mb', '.0f', ' MB')} |")
    return "\n".join(lines)


def chart(summary: list[dict], n: int, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = [g for g in ("pytorch", "tensorflow", "cifar", "compile", "saving")
              if any(d["group"] == g for d in summary)]
    fig, axes = plt.subplots(1, len(groups), figsize=(5 * len(groups), 4.5), squeeze=False)
    for ax, g in zip(axes[0], groups, strict=True):
        rows = [d for d in summary if d["group"] == g]
        ax.bar(range(len(rows)), [d["rate"] or 0 for d in rows],
               color=["0.6" if d["name"].startswith(("ceiling", "torchrun")) else "C0" for d in rows])
        ax.set_xticks(range(len(rows)), [_label(d["name"], n).split(":")[0] for d in rows], rotation=30,
                     ha="right", fontsize=8)
        ax.set_ylabel("samples/s (all workers)")
        ax.set_title(g)
        for i, d in enumerate(rows):
            share = d.get("of_ceiling", d.get("scaling_efficiency"))
            if share is not None:
                ax.annotate(f"{100 * share:.0f}%", (i, d["rate"]), ha="center", va="bottom", fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--np", type=int, default=2, help="workers (N)")
    p.add_argument("--model", default="resnet18", help="torchvision model of the PyTorch rows")
    p.add_argument("--tf-model", default="ResNet50", help="keras.applications model of the TF rows")
    p.add_argument("--batch-size", type=int, default=16, help="images per worker per step")
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--threads", type=int, default=0,
                   help="CPU threads per worker (default: cores / N, at least 1)")
    p.add_argument("--warmup", type=int, default=3, help="untimed batches per run")
    p.add_argument("--iters", type=int, default=5, help="timed iterations per run")
    p.add_argument("--batches-per-iter", type=int, default=3)
    p.add_argument("--cifar-depth", type=int, default=20, help="CIFAR ResNet depth (6n+2)")
    p.add_argument("--cifar-batch-size", type=int, default=64)
    p.add_argument("--cifar-steps", type=int, default=40, help="training steps per CIFAR run")
    p.add_argument("--rounds", type=int, default=2, help="runs of every row; the median is reported")
    p.add_argument("--saving-model", default="resnet50",
                   help="torchvision model of the saving rows (resnet50: a 190 MB checkpoint)")
    p.add_argument("--saving-image-size", type=int, default=64)
    p.add_argument("--saving-batch-size", type=int, default=4)
    p.add_argument("--saving-steps", type=int, default=24, help="steps of each saving run")
    p.add_argument("--saving-every", type=int, default=4, help="--checkpoint-steps of the saving rows")
    p.add_argument("--only", choices=("pytorch", "tensorflow", "cifar", "compile", "saving"),
                   action="append",
                   help="run only these groups (repeatable; default: all)")
    p.add_argument("--timeout", type=float, default=900, help="seconds allowed for one run")
    p.add_argument("--out", default="runs/bench", help="folder for bench.json and bench.png")
    a = p.parse_args(argv)
    if a.np < 1 or a.rounds < 1 or a.iters < 1 or a.batches_per_iter < 1 or a.cifar_steps < 1:
        p.error("--np, --rounds, --iters, --batches-per-iter and --cifar-steps must be >= 1")
    a.threads = a.threads or max(1, cpu_cores() // a.np)
    return a


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    env = launch_env()
    user_tuning = {k: v for k, v in os.environ.items() if k.startswith(TUNING_PREFIXES)}
    with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        work = Path(tmp)
        # Enough generated samples for np=N workers x steps x batch, and 1,000 to validate.
        per_batch = -(-a.np * a.cifar_steps * a.cifar_batch_size // 5) + 1
        data_dir = str(work / "cifar")
        rows = [r for r in [*build_rows(a, data_dir), *saving_rows(a, work / "images", work)]
                if not a.only or r.group in a.only]
        if any(r.group == "cifar" for r in rows):
            from common.data.datasets import write_cifar10

            write_cifar10(data_dir, per_batch, 1000)
        if any(r.group == "saving" for r in rows):
            from common.data.datasets import write_image_folders

            write_image_folders(str(work / "images"), 2, a.np * a.saving_batch_size * a.saving_steps // 2,
                                a.np, a.saving_image_size)
        print(f"bench: {len(rows)} runs x {a.rounds} round(s), N={a.np}, {a.threads} thread(s) "
              f"per worker, {cpu_cores()} cores"
              + (f"; your settings: {user_tuning}" if user_tuning else ""), flush=True)
        t0 = time.monotonic()
        for k in range(a.rounds):
            for r in rows:
                if r.error:
                    continue
                run_row(r, env, a.timeout, work)
                got = f"{r.rates[-1]:.1f} samples/s" if len(r.rates) > k else f"FAILED ({r.error})"
                if len(r.records) > k and r.records[-1].get("checkpoints"):
                    rec = r.records[-1]
                    got += (f", {rec['checkpoints']} checkpoints, "
                            f"{rec['checkpoint_pause_s'] / rec['checkpoints']:.3f} s pause each")
                print(f"  round {k + 1}: {r.name}: {got}", flush=True)
    summary = summarise(rows, a.np)
    title = (f"{a.model} / {a.tf_model}, {a.image_size}px, batch {a.batch_size}/worker, N={a.np}, "
             f"{a.threads} thread(s)/worker, median of {a.rounds}")
    text = table(summary, a.np)
    ranked = [d for d in summary if d["rate"] and d["group"] == "pytorch"
              and not d["name"].startswith("ceiling")]
    fastest = max(ranked, key=lambda d: d["rate"])["name"] if ranked else None
    if any(d["group"] == "saving" for d in summary):
        text += (f"\n\nSaving ({a.saving_model} at {a.saving_image_size} px, batch "
                 f"{a.saving_batch_size}/worker, {a.saving_steps} steps):\n\n"
                 + saving_table(summary))
    print(f"\n{title}\n\n{text}\n")
    if fastest:
        print(f"fastest PyTorch launch at N={a.np}: {fastest}")
    result = {"date": time.strftime("%Y-%m-%d"), "settings": vars(a), "cores": cpu_cores(),
              "user_settings": user_tuning, "seconds": round(time.monotonic() - t0),
              "fastest": fastest, "rows": summary}
    (out / "bench.json").write_text(json.dumps(result, indent=1) + "\n")
    chart(summary, a.np, out / "bench.png", title)
    print(f"wrote {out / 'bench.json'} and {out / 'bench.png'}")
    return 1 if any(d["error"] for d in summary) else 0


if __name__ == "__main__":
    sys.exit(main())
