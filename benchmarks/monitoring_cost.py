"""Monitoring cost owns what monitoring costs a run: instruments off, --timeline-out, --autotune, older code.

Run:  python -m benchmarks.monitoring_cost [--np 2] [--rounds 5] [--baseline /path/to/old/checkout]
          [--out runs/monitoring_cost] -- RECIPE [its flags ...]

Every variant launches the same recipe under ``mpirun -np N`` with the same flags; rounds are
interleaved (round 1 of every variant, then round 2, ...). A variant's rate is the mean
samples/s of the run's epoch records after the first (the first holds start-up: tracing,
allocation); its cost is ``1 - rate / rate(off)``, the median of the ratios taken within one
round. ``--baseline`` adds the recipe run from another checkout of this project (the code
before a change), with everything off: the load-balance timing that every run now does is the
difference between it and ``off``. Writes ``monitoring_cost.md`` and ``.json`` to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.bench import BIN, ROOT, last_line, launch_env, mpirun_command, run_side_by_side
from common.world.runtime import cpu_cores


def variants(a: argparse.Namespace, work: Path) -> dict[str, tuple[Path, list[str]]]:
    """name -> (checkout, extra flags)."""
    out = {"off": (ROOT, []),
           "--timeline-out": (ROOT, ["--timeline-out", str(work / "timeline.json")]),
           "--autotune": (ROOT, ["--autotune"])}
    if a.baseline:
        out["baseline (other checkout)"] = (Path(a.baseline).resolve(), [])
    return out


def rate(path: Path) -> float | None:
    """Mean samples/s of the epoch records after the first."""
    if not path.exists():
        return None
    epochs = [json.loads(ln) for ln in path.read_text().splitlines()]
    epochs = [r["samples_per_sec"] for r in epochs if r.get("type") == "epoch"]
    return statistics.mean(epochs[1:] or epochs) if epochs else None


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--np", type=int, default=2, help="workers")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--baseline", help="another checkout of this project to compare with")
    p.add_argument("--timeout", type=float, default=900)
    p.add_argument("--out", default="runs/monitoring_cost")
    p.add_argument("recipe", nargs=argparse.REMAINDER, help="-- the recipe and its flags")
    a = p.parse_args(argv)
    a.recipe = a.recipe[1:] if a.recipe[:1] == ["--"] else a.recipe
    if not a.recipe or a.np < 1 or a.rounds < 1:
        p.error("give -- RECIPE [flags]; --np and --rounds must be >= 1")
    return a


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    rates: dict[str, list[float | None]] = {}
    errors: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="monitoring-cost-") as tmp:
        work = Path(tmp)
        runs = variants(a, work)
        print(f"monitoring cost: {' '.join(a.recipe)} on {a.np} workers under mpirun, "
              f"{a.rounds} round(s), variants: {', '.join(runs)}", flush=True)
        for k in range(a.rounds):
            for name, (checkout, extra) in runs.items():
                env = dict(launch_env(), PYTHONPATH=f"{checkout}{os.pathsep}"
                           f"{os.environ.get('PYTHONPATH', '')}")
                metrics = work / f"{abs(hash(name))}-{k}.jsonl"
                cmd = [*mpirun_command(a.np), "-bind-to", "none", "-map-by", "slot", "-x",
                       "PYTHONPATH", str(BIN / "python"), str(checkout / a.recipe[0]),
                       *a.recipe[1:], "--checkpoint-dir", "", "--no-progress", *extra]
                try:
                    [(code, text)] = run_side_by_side([cmd], [metrics], env, a.timeout)
                except TimeoutError as e:
                    code, text = 1, str(e)
                got = rate(metrics) if code == 0 else None
                if got is None:
                    errors[name] = f"exit {code}: {last_line(text)}"
                rates.setdefault(name, []).append(got)
                print(f"  round {k + 1}: {name}: "
                      + (f"{got:,.1f} samples/s" if got else f"FAILED ({errors[name]})"), flush=True)
    rows = []
    for name, values in rates.items():
        pairs = [(v, o) for v, o in zip(values, rates["off"], strict=True) if v and o]
        ratio = statistics.median(v / o for v, o in pairs) if pairs else None
        ok = [v for v in values if v]
        rows.append({"variant": name, "median": statistics.median(ok) if ok else None,
                     "rounds": values, "vs_off": ratio, "error": errors.get(name, "")})
    lines = ["| variant | samples/s (median) | rounds | vs off (median of per-round ratios) |",
             "|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['variant']} | {r['median'] or 0:,.1f} | "
                     f"{', '.join(f'{v:,.0f}' if v else 'failed' for v in r['rounds'])} | "
                     + (f"{r['vs_off']:.3f}" if r["vs_off"] else "n/a") + " |")
    title = (f"{' '.join(a.recipe)}, {a.np} workers under mpirun, {cpu_cores()} cores, "
             f"{a.rounds} rounds, {time.strftime('%Y-%m-%d')}")
    text = "\n".join(lines)
    (out / "monitoring_cost.md").write_text(f"# Monitoring cost\n\n{title}\n\n{text}\n")
    (out / "monitoring_cost.json").write_text(json.dumps(
        {"date": time.strftime("%Y-%m-%d"), "recipe": a.recipe, "np": a.np, "rows": rows},
        indent=1) + "\n")
    print(f"\n{title}\n\n{text}\n")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
