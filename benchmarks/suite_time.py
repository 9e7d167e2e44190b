"""Suite time owns the table of where the test suite's time goes: by file, and by kind of work.

Run the suite with this module as a pytest plugin; it logs every process a test starts
(its command and wall time) and every test's own wall time, the CPU time of the jobs it
started, when it started and in which xdist process::

    SUITE_TIME_LOG=runs/suite-time.jsonl python -m pytest -p benchmarks.suite_time
    python -m benchmarks.suite_time runs/suite-time.jsonl [--costs COSTS.json]

The summary splits each launch's wall time into kinds: start-up (interpreter and framework
imports, the launcher's own start and, for horovodrun, its build checks), deliberate waits
(a stall timeout the test chose, waits for a fault to be noticed), and the rest: training,
evaluation and checkpoint I/O inside the job. Start-up costs come from ``--costs`` (measured
with ``--measure-costs`` on an idle machine), so the split is as good as those numbers; the
totals per file and per test are measured directly.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import re
import resource
import subprocess
import sys
import threading
import time
from pathlib import Path

LOG_ENV = "SUITE_TIME_LOG"
_lock = threading.Lock()
_current = {"test": ""}


def _log(record: dict) -> None:
    path = os.environ.get(LOG_ENV)
    if not path:
        return
    with _lock, open(path, "a") as f:
        f.write(json.dumps(record) + "\n")


# --- the pytest plugin -------------------------------------------------------------------------

def pytest_configure(config):
    if not os.environ.get(LOG_ENV):
        return
    popen = subprocess.Popen
    init, wait = popen.__init__, popen.wait

    def timed_init(self, args, *a, **kw):
        self._suite_t0 = time.monotonic()
        self._suite_test = _current["test"]
        init(self, args, *a, **kw)

    def timed_wait(self, timeout=None):
        code = wait(self, timeout)
        if not getattr(self, "_suite_logged", False) and hasattr(self, "_suite_t0"):
            self._suite_logged = True
            args = self.args if isinstance(self.args, list | tuple) else [self.args]
            _log({"type": "launch", "test": self._suite_test, "args": [str(a) for a in args],
                  "seconds": time.monotonic() - self._suite_t0})
        return code

    popen.__init__, popen.wait = timed_init, timed_wait


def _children_cpu() -> float:
    """CPU seconds of every process this one has started and reaped (with their own children)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def pytest_runtest_protocol(item, nextitem):
    _current["test"] = item.nodeid
    item._suite_t0 = time.monotonic()
    item._suite_start = time.time()
    item._suite_cpu0 = _children_cpu()


def pytest_runtest_makereport(item, call):
    if call.when == "teardown" and hasattr(item, "_suite_t0"):
        # cpu: the jobs the test started (the test process's own work aside); start and worker:
        # when and in which xdist process it ran, to see what ran side by side
        _log({"type": "test", "test": item.nodeid, "seconds": time.monotonic() - item._suite_t0,
              "cpu": _children_cpu() - item._suite_cpu0, "start": item._suite_start,
              "worker": os.environ.get("PYTEST_XDIST_WORKER", "")})


# --- the summary -------------------------------------------------------------------------------

def kind_of(args: list[str]) -> dict:
    """What a launch is: its launcher, worker count and the framework its workers import."""
    text = " ".join(args)
    name = Path(args[0]).name if args else ""
    if name == "hvd-launch":
        name = Path(args[1]).name
    launcher = {"horovodrun": "horovodrun", "mpirun": "mpirun", "python": "python",
                "bash": "bash"}.get(name, name)
    if launcher == "python" and "-m" in args:
        launcher = "python -m " + args[args.index("-m") + 1]
    np_ = 1
    m = re.search(r"-np (\d+)", text)
    if m:
        np_ = int(m.group(1))
    words = set(text.split())
    if "/tensorflow/" in text or "tf_mixed" in text or words & {"tf", "keras"}:
        framework = "tensorflow"
    elif re.search(r"pytorch|torch|mnist|/tests/helpers/", text):
        framework = "torch"  # the helper scripts are PyTorch jobs unless named otherwise
    else:
        framework = "none"
    return {"launcher": launcher, "np": np_, "framework": framework,
            "gloo": "--gloo" in args, "stall": "--stall-timeout" in args}


def summarize(records: list[dict], costs: dict) -> dict:
    tests = [r for r in records if r["type"] == "test"]
    launches = [r for r in records if r["type"] == "launch"]
    by_file: dict[str, dict] = collections.defaultdict(lambda: collections.Counter())
    for t in tests:
        by_file[t["test"].split("::")[0]]["total"] += t["seconds"]
        by_file[t["test"].split("::")[0]]["cpu"] += t.get("cpu", 0.0)
        by_file[t["test"].split("::")[0]]["tests"] += 1
    for launch in launches:
        f = launch["test"].split("::")[0]
        k = kind_of(launch["args"])
        row = by_file[f]
        row["launches"] += 1
        row["in_launches"] += launch["seconds"]
        startup = 0.0
        if k["launcher"] == "horovodrun":
            startup += costs.get("horovodrun_gloo" if k["gloo"] else "horovodrun_mpi", 0.0)
        elif k["launcher"] == "mpirun":
            startup += costs.get("mpirun", 0.0)
        if k["framework"] != "none" and k["launcher"] in ("horovodrun", "mpirun", "python"):
            # the workers import their framework side by side on the machine's cores
            per_worker = costs.get(f"import_{k['framework']}", 0.0)
            startup += per_worker * max(1.0, k["np"] / costs.get("cores", 2))
        startup = min(startup, launch["seconds"])
        row["startup"] += startup
        row["rest_of_launch"] += launch["seconds"] - startup
    for row in by_file.values():
        row["outside_launches"] = max(0.0, row["total"] - row["in_launches"])
    total = collections.Counter()
    for row in by_file.values():
        total.update(row)
    return {"by_file": {k: dict(v) for k, v in sorted(by_file.items())}, "total": dict(total)}


def by_kind(records: list[dict], costs: dict) -> list[dict]:
    """Launches grouped by launcher and framework: how many, their seconds, the start-up share."""
    rows: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    for launch in (r for r in records if r["type"] == "launch"):
        k = kind_of(launch["args"])
        if k["launcher"] not in ("horovodrun", "mpirun", "python") and \
                not k["launcher"].startswith("python -m"):
            label = "other tools (bash scripts, mount, docker info, ...)"
        else:
            label = f"{k['launcher']} ({k['framework']})"
        row = rows[label]
        row["launches"] += 1
        row["seconds"] += launch["seconds"]
    return [{"kind": k, **v} for k, v in sorted(rows.items(), key=lambda kv: -kv[1]["seconds"])]


def table(summary: dict) -> str:
    cols = ["tests", "launches", "total", "cpu", "startup", "rest_of_launch", "outside_launches"]
    lines = ["| file | " + " | ".join(cols) + " |", "|" + " --- |" * (len(cols) + 1)]
    rows = sorted(summary["by_file"].items(), key=lambda kv: -kv[1].get("total", 0))
    for name, row in [*rows, ("all", summary["total"])]:
        cells = [f"{row.get(c, 0):.0f}" if isinstance(row.get(c, 0), float) else str(row.get(c, 0))
                 for c in cols]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def measure_costs() -> dict:
    """Per-launch start-up costs on this machine (run it idle), in seconds, best of 3."""
    bin_dir = Path(sys.executable).parent

    def best(cmd: list[str], **env: str) -> float:
        times = []
        for _ in range(3):
            t0 = time.monotonic()
            subprocess.run(cmd, check=True, capture_output=True, env={**os.environ, **env})
            times.append(time.monotonic() - t0)
        return min(times)

    py = str(bin_dir / "python")
    base = best([py, "-c", "pass"])
    out = {"cores": len(os.sched_getaffinity(0)), "python": base,
           "import_torch": best([py, "-c", "import torch, horovod.torch"]) - base,
           "import_tensorflow": best([py, "-c", "import tensorflow, horovod.tensorflow"]) - base}
    root = ["--allow-run-as-root"] if os.geteuid() == 0 else []
    out["mpirun"] = best(["mpirun", *root, "-np", "1", py, "-c", "pass"]) - base
    hr = str(bin_dir / "horovodrun")
    out["horovodrun_gloo"] = best([hr, "-np", "1", "-H", "localhost:1", "--gloo", py, "-c",
                                   "pass"]) - base
    out["horovodrun_mpi"] = best([hr, "-np", "1", "-H", "localhost:1", py, "-c", "pass"]) - base
    # Horovod's launcher as it is (HOROVOD_RECIPES_RAW_OUTPUT=1: no common.world.quiet, so its build
    # checks import TensorFlow in a forked process at every launch, as before common.world.build_checks)
    for name, flags in (("horovodrun_gloo_unremembered", ["--gloo"]),
                        ("horovodrun_mpi_unremembered", [])):
        out[name] = best([hr, "-np", "1", "-H", "localhost:1", *flags, py, "-c", "pass"],
                         HOROVOD_RECIPES_RAW_OUTPUT="1") - base
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("log", nargs="?")
    p.add_argument("--costs", help="JSON of start-up costs (from --measure-costs)")
    p.add_argument("--measure-costs", metavar="OUT", help="measure start-up costs into OUT")
    p.add_argument("--json", metavar="OUT", help="also write the summary as JSON")
    args = p.parse_args(argv)
    if args.measure_costs:
        costs = measure_costs()
        Path(args.measure_costs).write_text(json.dumps(costs, indent=1) + "\n")
        print(json.dumps(costs, indent=1))
        if not args.log:
            return
    if not args.log:
        p.error("a log file (SUITE_TIME_LOG of a pytest run) is needed")
    costs = json.loads(Path(args.costs).read_text()) if args.costs else {}
    records = [json.loads(x) for x in Path(args.log).read_text().splitlines() if x.strip()]
    summary = summarize(records, costs)
    summary["by_kind"] = by_kind(records, costs)
    print(table(summary))
    print()
    print("| kind of launch | launches | seconds |\n| --- | --- | --- |")
    for row in summary["by_kind"]:
        print(f"| {row['kind']} | {row['launches']} | {row['seconds']:.0f} |")
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=1) + "\n")


if __name__ == "__main__":
    main()
