"""Scaling owns the scaling report: one recipe at each worker count, its efficiency and communication share.

Run:  python -m benchmarks.scaling --np 1,2 [--launcher horovodrun|gloo|mpirun] [--rounds 2]
          [--out runs/scaling] -- RECIPE [its flags ...]

Any recipe works, of either framework: a synthetic benchmark (its ``benchmark`` record's
img/s over all workers) or a training recipe, best with ``--max-steps`` (the throughput of its
last epoch record, with the load-balance fields the core adds: the communication share, where
the framework splits it out, and the spread between ranks). Every worker count runs
``--rounds`` times, interleaved (round 1 of every count, then round 2, ...), so a slow spell of
the machine hits every count alike; the report gives each count's median, and its speed-up and
scaling efficiency (rate at N / (N x rate at the smallest count)) as the median of the ratios
taken within one round. Every count runs on this machine, or with ``--hosts a:1,b:1`` on the
first N slots of those hosts; so that the ideal line means what it says, each worker gets the
same CPU threads at every count (``--threads-per-worker``: cores / the largest count, unless
the recipe's flags set it): N workers bring N times the cores of one.
It writes ``scaling.md`` (a Markdown table), ``scaling.json`` and
``scaling.png`` (throughput against workers with the ideal line, efficiency, communication
share) to ``--out``.

``--project 8,32,128 --link 10Gbit,50us [--link ...]``: the efficiency those worker counts
would have over each link (``benchmarks.projection``), from the one-worker run's step time and
gradient bytes (a PyTorch recipe's final record; otherwise ``--gradient-mb``), as a table in
``scaling.md`` and a plot ``projection.png``; ``--link measure`` measures the link the runs
themselves use (``benchmarks.linkprobe`` at the largest count, with the same launcher). With
one link given, the report's own measured counts above one are set beside their prediction: run
it on the hosts whose link you give (a shaped link, a real cluster) to check the model. The
compute step the projection uses is the largest count's step less its wait for the allreduce.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.bench import BIN, ROOT, last_line, launch_env, mpirun_command, run_side_by_side
from benchmarks.projection import CPU_OVERLAP, Link, project
from benchmarks.projection import chart as projection_chart
from benchmarks.projection import table as table_of_projection
from common.world.runtime import cpu_cores

LAUNCHERS = ("horovodrun", "gloo", "mpirun")


def first_slots(hosts: str, n: int) -> str:
    """The first ``n`` slots of ``HOST:SLOTS,...`` in ``-H``'s form: 1 worker on the first host,
    2 on the first two of ``a:1,b:1``."""
    picked, left = [], n
    for entry in hosts.split(","):
        name, _, slots = entry.strip().partition(":")
        take = min(int(slots or 1), left)
        if take > 0:
            picked.append(f"{name}:{take}")
            left -= take
    if left > 0:
        raise ValueError(f"--hosts {hosts} has fewer than {n} slots")
    return ",".join(picked)


def launch_command(launcher: str, n: int, hosts: str = "") -> list[str]:
    """The launcher's command for ``n`` workers: on this machine, or on the first ``n`` slots
    of ``hosts``."""
    where = ["-H", first_slots(hosts, n)] if hosts else []
    if launcher == "mpirun":
        return [*mpirun_command(n), *where, "-bind-to", "none", "-map-by", "slot"]
    cmd = [str(BIN / "horovodrun"), "-np", str(n), *where]
    return [*cmd, "--gloo"] if launcher == "gloo" else cmd


def threads_per_worker(counts: list[int]) -> int:
    """The threads each worker gets at every count: this machine's cores over the largest."""
    return max(1, cpu_cores() // max(counts))


def measured(records: list[dict]) -> dict | None:
    """What one run's metrics file says: samples/s over all workers and, for a training recipe,
    the last epoch's communication share and load-balance spread."""
    bench = [r for r in records if r.get("type") == "benchmark"]
    if bench:
        return {"rate": bench[-1]["img_per_sec_total"], "comm_share": None, "spread": None}
    epochs = [r for r in records if r.get("type") == "epoch"]
    if not epochs:
        return None
    last = epochs[-1]
    final = ([r for r in records if r.get("type") == "final"] or [{}])[-1]
    steps = final.get("step_s_by_rank")  # a PyTorch recipe's: what the projection starts from
    if steps:
        step_s = statistics.fmean(steps)
    else:  # elsewhere: the last epoch's time over its steps (data loading and metrics included)
        before = epochs[-2]["step"] if len(epochs) > 1 else 0
        step_s = last["epoch_time_s"] / max(last["step"] - before, 1)
    comm = final.get("comm_s_by_rank")
    return {"rate": last["samples_per_sec"], "comm_share": last.get("comm_share"),
            "spread": last.get("balance_spread"), "step_s": step_s,
            "comm_s": statistics.fmean(comm) if comm else None,
            "gradient_bytes": final.get("gradient_bytes")}


def run_once(command: list[str], path: Path, env: dict, timeout: float) -> dict:
    """One launch: its measurement, or ``{"error": ...}``."""
    try:
        [(code, text)] = run_side_by_side([command], [path], env, timeout)
    except TimeoutError as e:
        return {"error": str(e)}
    records = [json.loads(ln) for ln in path.read_text().splitlines()] if path.exists() else []
    got = measured(records)
    if code or got is None:
        return {"error": f"exit {code}: {last_line(text)}"}
    return got


def _median(values: list) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def summarise(counts: list[int], runs: dict[int, list[dict]]) -> list[dict]:
    """Each worker count's median rate, speed-up and efficiency (ratios within a round, against
    the smallest count), and its median communication share and spread."""
    base = counts[0]
    rows = []
    for n in counts:
        ok = [r for r in runs[n] if "error" not in r]
        errors = [r["error"] for r in runs[n] if "error" in r]
        pairs = [(r, b) for r, b in zip(runs[n], runs[base], strict=True)
                 if "error" not in r and "error" not in b]
        speedup = _median([r["rate"] / b["rate"] for r, b in pairs])
        rows.append({
            "workers": n, "rate": _median([r["rate"] for r in ok]),
            "rounds": [r["rate"] for r in ok], "speedup": speedup,
            "efficiency": speedup * base / n if speedup is not None else None,
            "comm_share": _median([r["comm_share"] for r in ok]),
            "spread": _median([r["spread"] for r in ok]), "error": errors[0] if errors else "",
        })
    return rows


def table(rows: list[dict]) -> str:
    def f(v, fmt):
        return format(v, fmt) if v is not None else "n/a"

    lines = ["| workers | samples/s (median) | rounds | speed-up | scaling efficiency | "
             "communication share | load-balance spread |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        rate = f(r["rate"], ".1f") if r["rate"] is not None else f"failed: {r['error']}"
        lines.append(f"| {r['workers']} | {rate} | {', '.join(f'{v:.1f}' for v in r['rounds'])} | "
                     f"{f(r['speedup'], '.2f')}x | {f(r['efficiency'], '.0%')} | "
                     f"{f(r['comm_share'], '.0%')} | {f(r['spread'], '.2f')} |")
    return "\n".join(lines)


def chart(rows: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ns = [r["workers"] for r in rows]
    rates = [r["rate"] or 0.0 for r in rows]
    fig, (a, b, c) = plt.subplots(1, 3, figsize=(14, 4.2))
    if rows[0]["rate"]:
        a.plot(ns, [rows[0]["rate"] * n / ns[0] for n in ns], "--", color="0.5", label="ideal")
    a.plot(ns, rates, "o-", label="measured")
    a.set(xlabel="workers", ylabel="samples/s (all workers)", title="throughput", xticks=ns)
    a.legend()
    b.plot(ns, [100 * (r["efficiency"] or 0) for r in rows], "o-")
    b.axhline(100, ls="--", color="0.5")
    b.set(xlabel="workers", ylabel="% of ideal", title="scaling efficiency", xticks=ns,
          ylim=(0, 110))
    shares = [r["comm_share"] for r in rows]
    c.bar(ns, [100 * (s or 0) for s in shares], color="C1")
    for n, s in zip(ns, shares, strict=True):
        c.annotate("n/a" if s is None else f"{100 * s:.0f}%", (n, 100 * (s or 0)), ha="center",
                   va="bottom", fontsize=8)
    c.set(xlabel="workers", ylabel="% of step time", title="communication share", xticks=ns,
          ylim=(0, 100))
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--np", default="1,2", help="worker counts, comma-separated, e.g. 1,2,4")
    p.add_argument("--launcher", choices=LAUNCHERS, default="horovodrun",
                   help="horovodrun (its default controller), gloo (horovodrun --gloo) or mpirun")
    p.add_argument("--hosts", default="", metavar="HOST:SLOTS,...",
                   help="run across these hosts (the launcher's -H), N workers on the first N "
                        "slots; default: every worker on this machine")
    p.add_argument("--rounds", type=int, default=2, help="runs of every count (median reported)")
    p.add_argument("--timeout", type=float, default=900, help="seconds allowed for one run")
    p.add_argument("--out", default="runs/scaling", help="folder for scaling.md/.json/.png")
    p.add_argument("--project", default="", metavar="N,N,...",
                   help="worker counts to predict the efficiency of (benchmarks.projection)")
    p.add_argument("--link", action="append", default=[], metavar="BANDWIDTH[,LATENCY]",
                   help="a link to project over, e.g. 10Gbit,50us (repeatable); 'measure': "
                        "the runs' own link, by benchmarks.linkprobe")
    p.add_argument("--overlap", type=float, default=CPU_OVERLAP,
                   help="share of a step the allreduce can hide behind (default 0, as CPU "
                        "workers measured; at best 2/3, the backward's share, on GPUs)")
    p.add_argument("--gradient-mb", type=float, default=None,
                   help="gradient MB per step, where the recipe's record does not say")
    p.add_argument("recipe", nargs=argparse.REMAINDER,
                   help="-- the recipe's path and flags (without --metrics-file)")
    a = p.parse_args(argv)
    try:
        a.counts = sorted({int(n) for n in a.np.split(",") if n.strip()})
    except ValueError:
        p.error(f"--np must be comma-separated worker counts, got {a.np!r}")
    a.recipe = a.recipe[1:] if a.recipe[:1] == ["--"] else a.recipe
    if not a.counts or a.counts[0] < 1 or a.rounds < 1:
        p.error("--np needs counts >= 1 and --rounds must be >= 1")
    if a.hosts:
        try:
            first_slots(a.hosts, max(a.counts))
        except ValueError as e:
            p.error(str(e) if "slots" in str(e) else f"--hosts wants HOST:SLOTS,..., got {a.hosts!r}")
    if not a.recipe or not Path(a.recipe[0]).is_file():
        p.error(f"give the recipe after --, e.g. -- recipes/pytorch/mnist.py --max-steps 50 "
                f"(got {' '.join(a.recipe) or 'nothing'})")
    try:
        a.project_counts = sorted({int(n) for n in a.project.split(",") if n.strip()})
        a.links = [None if x == "measure" else Link.parse(x) for x in a.link]
    except ValueError as e:
        p.error(str(e).replace("invalid literal for int() with base 10", "--project wants "
                               "comma-separated worker counts, got"))
    if a.project_counts and not a.links:
        p.error("--project needs a --link (e.g. --link 10Gbit,50us, or --link measure)")
    if a.links and not a.project_counts:
        p.error("--link goes with --project (the worker counts to predict)")
    if not 0 <= a.overlap <= 1:
        p.error("--overlap is a share of the step, from 0 to 1")
    for flag in ("--metrics-file", "--checkpoint-dir"):
        if any(w == flag or w.startswith(flag + "=") for w in a.recipe):
            p.error(f"leave {flag} out: every run gets its own metrics file and starts fresh, "
                    "without checkpoints")
    return a


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    env = launch_env()
    # No checkpoints: a run must not resume from the one before it.
    recipe = [str(Path(a.recipe[0]).resolve()), *a.recipe[1:], "--checkpoint-dir", "",
              "--no-progress"]
    if not any(w.startswith("--threads-per-worker") for w in a.recipe):
        recipe += ["--threads-per-worker", str(threads_per_worker(a.counts))]
    runs: dict[int, list[dict]] = {n: [] for n in a.counts}
    threads = recipe[recipe.index("--threads-per-worker") + 1] if (
        "--threads-per-worker" in recipe) else "as the recipe's flags say"
    print(f"scaling: {' '.join(a.recipe)} at {a.counts} worker(s) under {a.launcher}, "
          f"{a.rounds} round(s), {cpu_cores()} cores, {threads} thread(s) per worker", flush=True)
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="scaling-") as tmp:
        for k in range(a.rounds):
            for n in a.counts:
                cmd = [*launch_command(a.launcher, n, a.hosts), str(BIN / "python"), *recipe]
                got = run_once(cmd, Path(tmp) / f"np{n}-round{k}.jsonl", env, a.timeout)
                runs[n].append(got)
                print(f"  round {k + 1}: {n} worker(s): "
                      + (f"FAILED ({got['error']})" if "error" in got else
                         f"{got['rate']:.1f} samples/s"), flush=True)
    rows = summarise(a.counts, runs)
    title = (f"{' '.join(a.recipe)} under {a.launcher}, {cpu_cores()} cores, {threads} "
             f"thread(s) per worker, median of {a.rounds} round(s), {time.strftime('%Y-%m-%d')}")
    text = table(rows)
    (out / "scaling.md").write_text(f"# Scaling report\n\n{title}\n\n{text}\n")
    (out / "scaling.json").write_text(json.dumps(
        {"date": time.strftime("%Y-%m-%d"), "recipe": a.recipe, "launcher": a.launcher,
         "threads_per_worker": threads,
         "rounds": a.rounds, "cores": cpu_cores(), "seconds": round(time.monotonic() - t0),
         "rows": rows}, indent=1) + "\n")
    chart(rows, out / "scaling.png", title)
    print(f"\n{title}\n\n{text}\n\nwrote {out / 'scaling.md'}, {out / 'scaling.json'} and "
          f"{out / 'scaling.png'}")
    failed = any(r["error"] for r in rows)
    if a.project_counts:
        failed |= not projection_report(a, runs, rows, env, out, title)
    return 1 if failed else 0


def projection_report(a: argparse.Namespace, runs: dict[int, list[dict]], rows: list[dict],
                      env: dict, out: Path, title: str) -> bool:
    """--project: the predicted efficiencies (and, with one link, the measured ones beside
    theirs) appended to scaling.md and scaling.json, and projection.png. False if it cannot."""
    ones = [r for r in runs.get(1, []) if "error" not in r and r.get("step_s")]
    if not ones:
        print("scaling: --project needs a 1-worker run (--np 1,...) of a training recipe",
              file=sys.stderr)
        return False
    step_s = _median([r["step_s"] for r in ones])
    nbytes = (a.gradient_mb * 1e6 if a.gradient_mb is not None else
              _median([r.get("gradient_bytes") for r in ones]))
    if not nbytes:
        print("scaling: the recipe's record does not give its gradient bytes: add --gradient-mb",
              file=sys.stderr)
        return False
    links = []
    for link in a.links:
        if link is None:
            link = measure_link(a, env, out, nbytes)
            if link is None:
                return False
        links.append(link)
    compute_s, at = distributed_compute(runs)
    counts = sorted({*a.project_counts, *(r["workers"] for r in rows if r["workers"] > 1)})
    predicted = project(counts, step_s, nbytes, links, a.overlap, compute_s)
    measured = []
    if len(links) == 1:  # the runs' own link: set each measured count beside its prediction
        measured = [{"link": links[0].label, "workers": r["workers"],
                     "efficiency": r["efficiency"]}
                    for r in rows if r["workers"] > 1 and r["efficiency"] is not None]
    text = projection_table(predicted, measured, step_s, nbytes, a.overlap)
    if compute_s is not None:
        text += (f"\n\nA worker's step on {at} workers without its wait for the allreduce: "
                 f"{compute_s * 1e3:.1f} ms (the projection's compute per step at every count; "
                 f"{step_s * 1e3:.1f} ms alone).")
    with (out / "scaling.md").open("a") as f:
        f.write(f"\n## Projection\n\n{text}\n")
    result = json.loads((out / "scaling.json").read_text())
    result["projection"] = {"step_s": step_s, "compute_s": compute_s, "compute_at": at,
                            "gradient_bytes": nbytes, "overlap": a.overlap,
                            "rows": predicted, "measured": measured}
    (out / "scaling.json").write_text(json.dumps(result, indent=1) + "\n")
    projection_chart(predicted, out / "projection.png", title, measured)
    print(f"\nProjection\n\n{text}\n\nwrote {out / 'projection.png'}")
    return True


def distributed_compute(runs: dict[int, list[dict]]) -> tuple[float | None, int | None]:
    """A worker's step at the largest measured count without its wait for the allreduce
    (median over rounds of the step minus the communication wait): what being distributed
    costs besides the link (Horovod's thread and negotiation sharing the worker's cores).
    (None, None) without a multi-worker run whose record splits the wait out."""
    for n in sorted(runs, reverse=True):
        got = [r["step_s"] - r["comm_s"] for r in runs[n] if n > 1 and "error" not in r
               and r.get("step_s") and r.get("comm_s") is not None]
        if got:
            return statistics.median(got), n
    return None, None


def projection_table(predicted: list[dict], measured: list[dict], step_s: float, nbytes: float,
                     overlap: float) -> str:
    text = table_of_projection(predicted, step_s, nbytes, overlap)
    if measured:
        by = {(r["link"], r["workers"]): r for r in predicted}
        lines = ["", "| link | workers | measured efficiency | predicted | difference |",
                 "|---|---|---|---|---|"]
        for m in measured:
            p = by[(m["link"], m["workers"])]["efficiency"]
            lines.append(f"| {m['link']} | {m['workers']} | {m['efficiency']:.0%} | {p:.0%} | "
                         f"{100 * (p - m['efficiency']):+.0f} points |")
        text += "\n" + "\n".join(lines)
    return text


def measure_link(a: argparse.Namespace, env: dict, out: Path, nbytes: float) -> Link | None:
    """The link the runs use, as Horovod's allreduce sees it (benchmarks.linkprobe at the
    largest measured count, with the same launcher), over buffers up to the job's gradient
    bytes (at least 4 MB): on a slow link 64 MB allreduces would take minutes."""
    n = max(max(a.counts), 2)
    path = out / "link.json"
    cmd = [*launch_command(a.launcher, n, a.hosts), str(BIN / "python"), "-m",
           "benchmarks.linkprobe", "--out", str(path), "--max-mb", f"{max(nbytes / 2**20, 4):.1f}"]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=a.timeout)
    if proc.returncode or not path.exists():
        print(f"scaling: measuring the link failed: {last_line(proc.stdout + proc.stderr)}",
              file=sys.stderr)
        return None
    got = json.loads(path.read_text())
    print(f"scaling: the runs' link, measured: {got['bits_per_s'] / 1e9:.3g} Gbit/s, "
          f"{got['latency_s'] * 1e6:.0f} us per message", flush=True)
    return Link(got["bits_per_s"], got["latency_s"])


if __name__ == "__main__":
    sys.exit(main())
