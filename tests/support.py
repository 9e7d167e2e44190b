"""Support owns how tests launch real jobs and read what they leave: launchers, records, checkpoints.

Every test that starts a worker process (one or several) does it through this module, so each
launch is bounded by the same hang guard and runs in the same environment. Tests import it as
``from tests.support import ...``; fixtures live in the conftest.py files, helpers here.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import gzip
import json
import os
import re
import shutil
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from common.world.quiet import RAW_OUTPUT_ENV

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
HELPERS = Path(__file__).resolve().parent / "helpers"
RECIPES = ROOT / "recipes"
MNIST = RECIPES / "pytorch" / "mnist.py"
TF_MNIST = RECIPES / "tensorflow" / "mnist.py"
KERAS_MNIST = RECIPES / "tensorflow" / "keras_mnist.py"
# Guards against a hung job only; no test asserts a duration.
HANG_GUARD_S = 900
ROOT_FLAG = ["--allow-run-as-root"] if os.geteuid() == 0 else []


# --- launching ---------------------------------------------------------------------------------

def job_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONPATH"] = f"{ROOT}{os.pathsep}{env.get('PYTHONPATH', '')}"
    env["PYTHONUNBUFFERED"] = "1"
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


def horovodrun(np: int, args: list, cwd: Path, hosts: str | None = None,
               check: bool = True) -> subprocess.CompletedProcess:
    """Launch ``python args...`` on ``np`` Gloo workers on this machine; return the finished job."""
    cmd = [str(BIN / "horovodrun"), "-np", str(np), "-H", hosts or f"localhost:{np}", "--gloo",
           "--disable-cache", str(BIN / "python"), *map(str, args)]
    return run_job(cmd, cwd, check)


def mpirun(np: int, args: list, cwd: Path, check: bool = True,
           extra: list[str] = ()) -> subprocess.CompletedProcess:
    """Launch ``python args...`` on ``np`` processes with Open MPI's mpirun, as the README says."""
    return run_job(mpirun_command(np, args, extra), cwd, check)


def mpirun_command(np: int, args: list, extra: list[str] = ()) -> list[str]:
    exports = ["PATH", "LD_LIBRARY_PATH", "PYTHONPATH", "PYTHONUNBUFFERED", "OMP_NUM_THREADS"]
    env = job_env()
    return ["mpirun", *ROOT_FLAG, "-np", str(np), "-bind-to", "none", "-map-by", "slot",
            *[a for name in exports if name in env for a in ("-x", name)],
            *extra, str(BIN / "python"), *map(str, args)]


def python(args: list, cwd: Path, check: bool = True, env: dict | None = None,
           ) -> subprocess.CompletedProcess:
    """``python args...`` as one process, no launcher (a recipe run alone, a helper script)."""
    return run_job([str(BIN / "python"), *map(str, args)], cwd, check, env)


def run_job(cmd: list, cwd: Path, check: bool, env: dict | None = None,
            ) -> subprocess.CompletedProcess:
    try:
        proc = subprocess.run(list(map(str, cmd)), cwd=cwd, env=env or job_env(),
                              capture_output=True, text=True, timeout=HANG_GUARD_S)
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"job hung (no exit in {HANG_GUARD_S}s): {' '.join(map(str, cmd))}\n"
                    f"{e.stdout}\n{e.stderr}")
    if check and proc.returncode != 0:
        pytest.fail(f"job failed ({proc.returncode}): {' '.join(map(str, cmd))}\n"
                    f"--- stdout\n{proc.stdout[-6000:]}\n--- stderr\n{proc.stderr[-6000:]}")
    return proc


def shared_run(tmp_path_factory, name: str, make) -> Path:
    """The folder where ``make(folder)`` ran once for the whole session: the first process of
    the xdist pair to ask makes it (the other waits for it), every later ask reads it. For a
    reference run that tests in several files compare against."""
    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent  # shared by the xdist processes of this session
    folder = root / f"shared-{name}"
    with open(root / f"shared-{name}.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (folder / ".done").exists():
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir()
            make(folder)
            (folder / ".done").write_text("")
    return folder


# One short run of an MNIST recipe per launcher, made once for the session (the ``launched``
# fixture): the first screen, the runtime settings and mpirun-against-horovodrun read the same
# jobs. Run with no user setting of the output or the runtime in the environment.
SHORT = ["--epochs", "1", "--max-steps", "12", "--batch-size", "16", "--no-progress"]
LAUNCHED_ENV_UNSET = (RAW_OUTPUT_ENV, "OMPI_MCA_mpi_yield_when_idle", "HOROVOD_CYCLE_TIME")


@dataclasses.dataclass
class Launched:
    """What a finished job left: its folder (``ckpt/``, ``metrics.jsonl``) and its output."""
    out: Path
    stdout: str
    stderr: str


def launch_short(folder: Path, framework: str, launcher: str) -> Launched:
    """SHORT on 2 workers of the ``framework`` MNIST recipe, launched by ``launcher``:
    "horovodrun" (MPI, the README's default, with ``--threads-per-worker 1``), "gloo"
    (horovodrun --gloo) or "mpirun"; its output is kept in the folder."""
    script = {"pytorch": MNIST, "tensorflow": TF_MNIST}[framework]
    args = [script, *SHORT, "--checkpoint-dir", folder / "ckpt", "--metrics-file",
            folder / "metrics.jsonl"]
    cmd = {"horovodrun": [*LAUNCHERS["mpi"], BIN / "python", *args, "--threads-per-worker", "1"],
           "gloo": [*LAUNCHERS["gloo"], BIN / "python", *args],
           "mpirun": mpirun_command(2, args)}[launcher]
    env = job_env()
    for name in LAUNCHED_ENV_UNSET:
        env.pop(name, None)
    proc = run_job(cmd, folder, check=True, env=env)
    (folder / "stdout.txt").write_text(proc.stdout)
    (folder / "stderr.txt").write_text(proc.stderr)
    return read_launched(folder)


def read_launched(folder: Path) -> Launched:
    return Launched(folder, (folder / "stdout.txt").read_text(),
                    (folder / "stderr.txt").read_text())


def copy_run(src: Path, dst: Path) -> Path:
    """A finished run's folder (checkpoints and metrics) copied to ``dst``, to be resumed there
    while ``src`` stays as it was for the other tests that read it."""
    shutil.copytree(src, dst)
    return dst


def run_recipe(launch, np: int, script: Path, out: Path, *flags, check: bool = True):
    """``launch`` (horovodrun or mpirun) ``np`` workers of ``script`` writing to ``out``
    (``out/ckpt``, ``out/metrics.jsonl``): (out, the finished job)."""
    proc = launch(np, [script, "--checkpoint-dir", out / "ckpt", "--metrics-file",
                       out / "metrics.jsonl", *flags], cwd=out.parent, check=check)
    return out, proc


# --- reading what a job left -------------------------------------------------------------------

def read_records(path: Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def final_record(path: Path) -> dict:
    finals = [r for r in read_records(path) if r["type"] == "final"]
    assert finals, f"no final record in {path}"
    return finals[-1]


def epoch_records(path: Path) -> list[dict]:
    return [r for r in read_records(path) if r["type"] == "epoch"]


def tensorboard_scalars(log_dir: Path) -> dict[str, dict[str, list]]:
    """{"scalars"|"tensors": {tag: [[step, value], ...]}} of what a run wrote for TensorBoard,
    read in a process of
    its own (tests/helpers/tensorboard_scalars.py): TensorFlow never enters the test process."""
    proc = python([HELPERS / "tensorboard_scalars.py", log_dir], cwd=Path(log_dir).parent)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def load_checkpoint(path: str | Path) -> dict:
    import torch

    return torch.load(path, map_location="cpu", weights_only=True)


def final_checkpoint(out: Path) -> dict:
    """The checkpoint named by the final record of ``out/metrics.jsonl`` (PyTorch)."""
    return load_checkpoint(final_record(out / "metrics.jsonl")["checkpoint"])


def max_abs_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k].double() - b[k].double()).abs().max()) for k in a)


def tf_weights(metrics: Path) -> tuple[list[np.ndarray], dict]:
    """The arrays and header of the TensorFlow checkpoint named by the final record."""
    with np.load(final_record(metrics)["checkpoint"]) as f:
        header = json.loads(str(f["header"]))
        return [f[f"v{i}"] for i in range(header["count"])], header


def max_array_diff(a: list, b: list) -> float:
    return max(float(np.abs(x.astype(np.float64) - y).max()) for x, y in zip(a, b, strict=True))


def checkpoint_steps(folder: Path, load: bool = True) -> list[int]:
    """Steps of the checkpoints in ``folder``; ``load``: each is loaded and verified (only when
    no job writes there: a running job's rotation deletes files)."""
    from common.base.files import verified

    steps = []
    for path in sorted(Path(folder).glob("ckpt-*")):
        if path.suffix == ".pt" and load:
            steps.append(int(verified(load_checkpoint(path))["step"]))
        elif path.suffix in (".pt", ".npz"):  # by name (TF's are loaded by the resuming run)
            steps.append(int(path.stem.split("-s")[1]))
    return sorted(steps)


def worker_errors(proc) -> list[str]:
    """The ``error:`` lines the workers of a Gloo job wrote, without their rank tags."""
    return [line.split("<stderr>:", 1)[1] for line in proc.stderr.splitlines()
            if "<stderr>:error:" in line]


# --- finding and hurting workers ---------------------------------------------------------------

def kill_tree(root: int) -> None:
    """SIGKILL ``root`` and every process below it, whatever session each runs in."""
    for pid in [*descendants(root), root]:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def descendants(root: int) -> set[int]:
    """Every live process below ``root`` (its children, theirs, ...)."""
    children: dict[int, list[int]] = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(pid))
    found, todo = set(), [root]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def worker_pids(launcher: int, script: str | Path, *env: str) -> list[int]:
    """Python processes below the process ``launcher`` running ``script`` whose environment
    holds any of ``env`` (``"HOROVOD_RANK=1"``, ``"HOROVOD_HOSTNAME=127.0.0.1"``): the workers
    that launch started, and no other job's (tests may run side by side)."""
    wanted = [e.encode() for e in env]
    pids = []
    for pid in sorted(descendants(launcher)):
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if (any(str(script).encode() in c for c in cmd) and cmd[0].endswith(b"python")
                and any(w in environ for w in wanted)):
            pids.append(pid)
    return pids


def wait_for_records(job: subprocess.Popen, metrics: Path, what: str = "an epoch") -> None:
    """Block until ``metrics`` holds a record (the job's first epoch is done); the job must live."""
    deadline = time.monotonic() + HANG_GUARD_S
    while not (metrics.exists() and read_records(metrics)):
        assert job.poll() is None, job.communicate()
        assert time.monotonic() < deadline, f"the job never finished {what}"
        time.sleep(0.1)


LAUNCHERS = {
    "gloo": [str(BIN / "horovodrun"), "-np", "2", "-H", "localhost:2", "--gloo",
             "--disable-cache"],
    "mpi": [str(BIN / "horovodrun"), "-np", "2", "-H", "localhost:2"],  # the README's default
    # Two hosts for the launchers: horovodrun takes localhost and 127.0.0.1 for two (both local)
    "mpi-two-hosts": [str(BIN / "horovodrun"), "-np", "2", "-H", "localhost:1,127.0.0.1:1"],
    "mpirun": ["mpirun", *ROOT_FLAG, "-np", "2", "-bind-to", "none", "-x", "PATH", "-x",
               "PYTHONPATH", "-x", "PYTHONUNBUFFERED", "-x", "OMP_NUM_THREADS"],
}
HVD_LAUNCH = [str(BIN / "hvd-launch")]  # the console script make setup installs
# A fault's job must end this long after the injection (the stall timeout plus the launcher's
# own wind-down); far below the guard against a hung test.
END_BOUND_S = 90


class Faulty:
    """One launch of a recipe into which a fault is injected once its first epoch is recorded."""

    def __init__(self, launcher: str, script: Path, flags: list, run: Path, cwd: Path,
                 wrapped: bool | list[str] = False) -> None:
        """``wrapped``: under hvd-launch (a list: with these hvd-launch flags)."""
        self.script, self.run = script, run
        wrap = [*HVD_LAUNCH, *wrapped] if isinstance(wrapped, list) else HVD_LAUNCH if wrapped else []
        cmd = [*wrap, *LAUNCHERS[launcher], str(BIN / "python"),
               str(script), *map(str, flags), "--checkpoint-dir", str(run / "ckpt"),
               "--metrics-file", str(run / "m.jsonl")]
        self.job = subprocess.Popen(cmd, cwd=cwd, env=job_env(), stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, text=True, start_new_session=True)
        self.out = self.err = ""
        self.seconds = 0.0
        self.steps_saved: list[int] = []

    def wait_for_first_epoch(self) -> None:
        wait_for_records(self.job, self.run / "m.jsonl")

    def wait_for_relaunch(self, restarts: int) -> None:
        """Block until the ``restarts``-th relaunch (hvd-launch --max-restarts) recorded an epoch."""
        def relaunched() -> bool:
            types = [r["type"] for r in read_records(self.run / "m.jsonl")]
            after = [i for i, t in enumerate(types) if t == "restart"]
            return len(after) >= restarts and "epoch" in types[after[restarts - 1]:]

        deadline = time.monotonic() + HANG_GUARD_S
        while not relaunched():
            assert self.job.poll() is None, self.job.communicate()
            assert time.monotonic() < deadline, f"relaunch {restarts} never finished an epoch"
            time.sleep(0.1)

    def rank_pid(self, rank: int) -> int:
        pids = worker_pids(self.job.pid, self.script, f"HOROVOD_RANK={rank}", f"OMPI_COMM_WORLD_RANK={rank}")
        assert len(pids) == 1, f"workers of rank {rank}: {pids}"
        return pids[0]

    def inject(self, pid: int, sig: signal.Signals, record: list) -> None:
        """Send ``sig`` to ``pid``, wait for the job to end (bounded), note what it left."""
        self.steps_saved = checkpoint_steps(self.run / "ckpt", load=False)
        t0 = time.monotonic()
        os.kill(pid, sig)
        try:
            self.out, self.err = self.job.communicate(timeout=END_BOUND_S)
        except subprocess.TimeoutExpired:
            kill_tree(self.job.pid)  # the wrapper's launcher runs in a session of its own
            self.out, self.err = self.job.communicate()
            record.append({"hung": True, "lost": 0})
            pytest.fail(f"the job did not end within {END_BOUND_S} s of {sig.name}")
        finally:
            if self.job.poll() is None:
                kill_tree(self.job.pid)
        self.seconds = time.monotonic() - t0
        kept = checkpoint_steps(self.run / "ckpt")
        # Lost: a step checkpointed before the fault with no checkpoint as new kept after it.
        lost = sum(1 for step in self.steps_saved if not kept or max(kept) < step)
        record.append({"hung": False, "lost": lost})
        assert lost == 0, (self.steps_saved, kept)
        assert "<stderr>:Traceback" not in self.err and "Traceback" not in self.out


# The fault tests' run: three epochs (89 steps each, about 0.6 s) still to go when the fault
# hits after the first, a checkpoint every 30 steps, a stall timeout short enough to wait for and
# long enough to be unambiguous. With one epoch to go, a job whose launcher was killed sometimes
# finished its last steps before the workers' next check of the launcher (CI, 2026-12-02).
_FAULT_RUN = ["--epochs", "4", "--batch-size", "8", "--checkpoint-steps", "30", "--no-progress"]
FAULT_FLAGS = [*_FAULT_RUN, "--stall-timeout", "8"]
# The PyTorch stopped-rank jobs: a stall timeout of 4 s. They run alone, where a step takes
# milliseconds (no tracing), and the rank they stop never answers again.
STALL_FLAGS = [*_FAULT_RUN, "--stall-timeout", "4"]


def rerun_matches(run: Path, reference: dict, cwd: Path, flags: list) -> subprocess.CompletedProcess:
    """The same command again resumes and ends with the uninterrupted run's exact weights."""
    proc = horovodrun(2, [MNIST, *flags, "--checkpoint-dir", run / "ckpt", "--metrics-file",
                          run / "m.jsonl"], cwd=cwd)
    final = load_checkpoint(final_record(run / "m.jsonl")["checkpoint"])
    assert final["step"] == reference["step"]
    assert max_abs_diff(final["model"], reference["model"]) == 0.0  # bit-identical
    assert not list((run / "ckpt").glob(".tmp-*"))  # a killed writer's leftovers are gone
    epochs = [r["epoch"] for r in read_records(run / "m.jsonl") if r["type"] == "epoch"]
    assert epochs == list(range(1, reference["epoch"] + 1))  # each epoch once, in order
    return proc


def wait_for(job: subprocess.Popen, metrics: Path, what: str, found) -> list[dict]:
    """Block until ``found(records)`` holds for the metrics file's records; the job must live."""
    deadline = time.monotonic() + HANG_GUARD_S
    while True:
        records = read_records(metrics) if metrics.exists() else []
        if records and found(records):
            return records
        assert job.poll() is None, f"the job ended before {what}: {job.communicate()[0][-5000:]}"
        assert time.monotonic() < deadline, f"the job never reached {what}"
        time.sleep(0.2)


def world_records(records: list[dict]) -> list[tuple[int, int, str]]:
    """(size before, size after, cause) of each world change an elastic run recorded."""
    return [(r["previous_world_size"], r["world_size"], r["cause"]) for r in records
            if r["type"] == "world"]


def run_elastic_growth(script: Path, tmp_path: Path, leave: str, epochs: int = 4):
    """An elastic job that starts on 2 workers (host localhost:2) and is grown and shrunk by its
    discovery script, as a cluster's would be: once epoch 1 is done, host 127.0.0.1:1 appears
    (3 workers); once an epoch is done on 3, its worker leaves (``leave``: "killed", SIGKILL,
    the host listed again after Horovod's blacklist cooldown; or "removed", the host dropped
    from the list); once the world is back at 2, the host is listed (again) and joins.

    Returns (metrics records, job output) of a job that ended with exit status 0."""
    hosts = tmp_path / "hosts.txt"
    hosts.write_text("localhost:2\n")
    discover = tmp_path / "discover_hosts.sh"
    discover.write_text(f"#!/bin/sh\ncat {hosts}\n")
    discover.chmod(0o755)
    metrics = tmp_path / "metrics.jsonl"
    # --network-interface: one host is enough to start (without it, elastic Horovod waits for
    # two hosts to compare their interfaces). --blacklist-cooldown-range: a host whose worker
    # failed may come back 2 s later (by default never). Gloo's timeout: how long the others
    # wait for a joining worker to reach hvd.init (its imports, slow with both tests' jobs on
    # the 2 cores: over 10 s for TensorFlow's) and for a lost worker's ring.
    cmd = [str(BIN / "horovodrun"), "-np", "2", "--min-np", "2", "--max-np", "3",
           "--network-interface", "lo", "--blacklist-cooldown-range", "1", "2",
           "--gloo-timeout-seconds", "60", "--host-discovery-script", str(discover),
           str(BIN / "python"), str(script), "--epochs", str(epochs), "--batch-size", "8",
           "--commit-steps", "5", "--threads-per-worker", "1", "--checkpoint-dir",
           str(tmp_path / "ckpt"), "--metrics-file", str(metrics)]
    job = subprocess.Popen(cmd, cwd=tmp_path, env=job_env(), stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True, start_new_session=True)

    def epoch_on(size: int):
        return lambda rs: any(r["type"] == "epoch" and r["world_size"] == size for r in rs)

    try:
        wait_for(job, metrics, "epoch 1 on 2 workers", epoch_on(2))
        hosts.write_text("localhost:2\n127.0.0.1:1\n")
        wait_for(job, metrics, "an epoch on 3 workers", epoch_on(3))
        if leave == "killed":
            victims = worker_pids(job.pid, script, "HOROVOD_HOSTNAME=127.0.0.1")
            assert len(victims) == 1, victims
            os.kill(victims[0], signal.SIGKILL)
        hosts.write_text("localhost:2\n")
        wait_for(job, metrics, "the world back at 2",
                 lambda rs: world_records(rs)[-1:] and world_records(rs)[-1][1] == 2)
        hosts.write_text("localhost:2\n127.0.0.1:1\n")
        output, _ = job.communicate(timeout=HANG_GUARD_S)
    finally:
        if job.poll() is None:
            kill_tree(job.pid)  # its workers run in sessions of their own
    assert job.returncode == 0, output[-5000:]
    records = read_records(metrics)
    # Every epoch, in order (one a kill interrupts between its record and its commit repeats).
    done = [r["epoch"] for r in records if r["type"] == "epoch"]
    assert sorted(set(done)) == list(range(1, epochs + 1)) and done == sorted(done), done
    return records, output


# --- the strategies (hybrid parallelism, parameter servers) ------------------------------------

HYBRID = RECIPES / "pytorch" / "hybrid_parallel.py"
PS = RECIPES / "pytorch" / "parameter_server.py"
# Plain SGD steps from the same start: no LR scaling or warmup, so every run takes the same LR.
STEPS = ["--epochs", "1", "--max-steps", "8", "--no-progress", "--lr-scaling", "none",
         "--warmup-epochs", "0"]
# Two whole epochs, no decay (epochs 1 and 2 alike): what a run resumed on another layout ends at.
TWO_EPOCHS = ["--epochs", "2", "--max-steps", "1000", "--lr-decay", "none"]


def run_single(tmp: Path, name: str, batch: int, *extra: str) -> dict:
    """The MNIST recipe in one process (STEPS): the whole model, the global batch; its final
    record."""
    out = tmp / name
    python([MNIST, *STEPS, "--batch-size", batch, "--checkpoint-dir", out / "ckpt",
            "--metrics-file", out / "m.jsonl", *extra], cwd=tmp)
    return final_record(out / "m.jsonl")


def run_strategy(recipe: Path, tmp: Path, name: str, np: int, *flags, check: bool = True):
    """``mpirun -np N recipe STEPS flags``: (the job, its final record if it succeeded)."""
    out = tmp / name
    proc = mpirun(np, [recipe, *STEPS, "--checkpoint-dir", out / "ckpt", "--metrics-file",
                       out / "m.jsonl", *flags], cwd=tmp, extra=["--oversubscribe"], check=check)
    return proc, (final_record(out / "m.jsonl") if check else None)


# --- the SLURM script, run here without SLURM ------------------------------------------------

SBATCH = ROOT / "recipes" / "slurm" / "horovod.sbatch"


def sbatch(*args, env=None, check=True):
    """``bash recipes/slurm/horovod.sbatch args...`` run here, as a SLURM job's batch script."""
    proc = subprocess.run(["bash", str(SBATCH), *map(str, args)], cwd=ROOT, env=env or job_env(),
                          capture_output=True, text=True)
    if check:
        assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


def slurm_env(tmp_path, nodes, ntasks, per_node, mpi_plugins=("pmix", "none"), **extra):
    """The environment SLURM gives a batch script, with a fake ``scontrol`` and ``srun`` (only
    ``--mpi=list``, naming ``mpi_plugins``) on PATH."""
    fake = tmp_path / "bin"
    fake.mkdir(exist_ok=True)
    (fake / "scontrol").write_text(  # "show hostnames" lists the nodes; "requeue" is logged
        f'#!/bin/sh\nif [ "$1" = requeue ]; then echo "$@" >> {fake}/requeued; exit 0; fi\n'
        + "".join(f"echo {n}\n" for n in nodes))
    (fake / "srun").write_text("#!/bin/sh\necho 'MPI plugin types are...'\n"
                               + "".join(f"echo '\t{p}'\n" for p in mpi_plugins))
    for tool in ("scontrol", "srun"):
        (fake / tool).chmod(0o755)
    env = job_env()
    env.update({"PATH": f"{fake}{os.pathsep}{env['PATH']}", "SLURM_JOB_NODELIST": "node[01-02]",
                "SLURM_NTASKS": str(ntasks), "SLURM_NTASKS_PER_NODE": per_node, **extra})
    return env


class SlurmCluster:
    """The real one-node SLURM cluster of tests/jobs/slurm/conftest.py, driven by its commands."""

    ENDED = ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY",
             "PREEMPTED", "BOOT_FAIL", "DEADLINE")

    def __init__(self, folder: Path, env: dict[str, str], node: str) -> None:
        self.folder, self.env, self.node = folder, env, node

    def run(self, *cmd, check: bool = True) -> subprocess.CompletedProcess:
        proc = subprocess.run(list(map(str, cmd)), env=self.env, capture_output=True, text=True,
                              timeout=60)
        if check:
            assert proc.returncode == 0, proc.stdout + proc.stderr
        return proc

    def node_state(self) -> str:
        return self.run("sinfo", "-h", "-N", "-o", "%t", check=False).stdout.strip().rstrip("*~#")

    def submit(self, *args, env: dict[str, str] | None = None, flags=()) -> int:
        """``sbatch flags... recipes/slurm/horovod.sbatch args...`` from the repository root, on
        this one node (2 tasks, 1 CPU each, no GPU; the script's own SBATCH lines otherwise);
        the job's id."""
        proc = subprocess.run(
            ["sbatch", "--parsable", "--nodes=1", "--ntasks-per-node=2", "--cpus-per-task=1",
             "--gres=none", *map(str, flags), str(SBATCH), *map(str, args)], cwd=ROOT,
            env={**self.env, **(env or {})}, capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        return int(proc.stdout.strip().split(";")[0])

    def job(self, job_id: int) -> dict[str, str]:
        """``scontrol show job``'s fields (JobState, Restarts, ExitCode, StdOut, ...)."""
        out = self.run("scontrol", "show", "job", "-o", job_id).stdout
        return dict(word.split("=", 1) for word in out.split() if "=" in word)

    def wait(self, job_id: int, until=None, what: str = "its end") -> dict[str, str]:
        """Block until ``until(fields)`` (default: the job ended, not to be requeued); its fields."""
        until = until or (lambda job: job["JobState"] in self.ENDED)
        deadline = time.monotonic() + HANG_GUARD_S
        while not until(job := self.job(job_id)):
            assert time.monotonic() < deadline, f"SLURM job {job_id} never reached {what}: {job}"
            time.sleep(0.3)
        return job


# --- data a test writes ------------------------------------------------------------------------

def idx_bytes(array: np.ndarray) -> bytes:
    """``array`` as an IDX file (MNIST's format): uint8 or big-endian int32."""
    codes = {np.dtype(np.uint8): 0x08, np.dtype(">i4"): 0x0C}
    header = bytes([0, 0, codes[array.dtype], array.ndim])
    return header + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()


def write_mnist(directory: Path, n_train=12, n_val=5, gz=False, size=28) -> dict:
    """Random MNIST IDX files in ``directory``: {"train"|"t10k": (images, labels)}."""
    rng = np.random.default_rng(0)
    files = {}
    for prefix, n in (("train", n_train), ("t10k", n_val)):
        images = rng.integers(0, 256, (n, size, size), dtype=np.uint8)
        labels = rng.integers(0, 10, n, dtype=np.uint8)
        for kind, arr in (("images-idx3-ubyte", images), ("labels-idx1-ubyte", labels)):
            name = f"{prefix}-{kind}" + (".gz" if gz else "")
            data = idx_bytes(arr)
            (directory / name).write_bytes(gzip.compress(data) if gz else data)
        files[prefix] = (images, labels)
    return files


def write_cifar(directory: Path) -> None:
    """Five tiny CIFAR-10 "python version" training batches of 8 and a test batch of 10."""
    from common.data.datasets import write_cifar10

    write_cifar10(str(directory), per_batch=8, n_test=10)


# --- the docs' captured output -----------------------------------------------------------------

OWN_RECIPE_PAGE = ROOT / "docs" / "own-recipe.md"


def page_block(marker: str, page=OWN_RECIPE_PAGE) -> str:
    """The fenced block after ``<!-- marker -->`` on the page."""
    text = page.read_text()
    m = re.search(rf"<!-- {re.escape(marker)} -->\n```[a-z]*\n(.*?)\n```", text, re.S)
    assert m, f"no block marked {marker!r} in {page}"
    return m.group(1)


def kinds(lines) -> list[str]:
    """Each line's kind: its opening words, with numbers as #; a run of one kind counts once (notes,
    which depend on the situation, and progress lines are not counted)."""
    out: list[str] = []
    for line in lines:
        m = re.match(r"(fresh run|resumed from|config|runtime settings|[\w/]+(?=: \d+ train)|"
                     r"epoch [\d/]+|final|already trained)", line)
        kind = re.sub(r"\d+", "#", m.group(1)) if m else None
        if kind and (not out or out[-1] != kind):
            out.append(kind)
    return out


def shows_like_the_page(stdout: str, marker: str, page=OWN_RECIPE_PAGE) -> None:
    """The run prints the kinds of line the page shows, in its order (the page cuts epochs with
    '...'), and the run's first epoch is marked as including start-up as on the page."""
    shown = [ln for ln in page_block(f"first-screen: {marker}", page).splitlines() if ln != "..."]
    printed = [ln for ln in stdout.splitlines() if ln.strip()]
    want, got = kinds(shown), kinds(printed)
    assert got[:len(want)] == want, (want, got)
    first = next(ln for ln in printed if ln.startswith("epoch "))
    assert "(first epoch: includes start-up and tracing)" in first, first
    config = next(ln for ln in printed if ln.startswith("config: "))
    assert len(re.sub(r"\S*/\S*", "", config)) < 200, config  # the settings given (paths aside)
