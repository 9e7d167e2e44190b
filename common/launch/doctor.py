"""Doctor owns the first-run check of a machine: what Horovod, MPI and the frameworks here can do, and fixes.

Run it first on a new machine, container or cluster node (no launcher needed)::

    python -m common.launch.doctor          # a report, one problem per line with its fix
    python -m common.launch.doctor --json   # the same facts as one JSON object

It reports Horovod's version and build (frameworks, controllers, GPU tensor operations), the MPI
library that mpi4py loads and the one Horovod is linked against (they must be the same file),
``mpirun``'s version, the framework versions against versions.env, and the visible GPUs. Each
problem comes with a concrete fix. Exit status: 0 when nothing is broken (warnings allowed), 1
otherwise.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from common.world.quiet import quiet_stderr

ROOT = Path(__file__).resolve().parents[2]
SETUP = "make setup (or: bash setup/setup.sh)"


@dataclass
class Report:
    """The facts found, and the problems with their fixes (``level`` is "error" or "warning")."""

    facts: dict = field(default_factory=dict)
    problems: list[dict] = field(default_factory=list)

    def problem(self, level: str, what: str, fix: str) -> None:
        self.problems.append({"level": level, "problem": what, "fix": fix})

    @property
    def ok(self) -> bool:
        return not any(p["level"] == "error" for p in self.problems)


def pinned_versions() -> dict[str, str]:
    """versions.env as a dict (empty when this package is installed without its repository)."""
    path = ROOT / "versions.env"
    if not path.is_file():
        return {}
    pins = {}
    for line in path.read_text().splitlines():
        m = re.match(r"^([A-Z0-9_]+)=(.*)$", line.strip())
        if m:
            pins[m.group(1)] = m.group(2).strip('"')
    return pins


def _version(module: str) -> str | None:
    """The installed version of a module's distribution, read without importing it.

    (Importing TensorFlow, then torchvision, crashes inside Triton on this stack, so the doctor
    imports only what it must: the Horovod extensions.)
    """
    dists = {"tensorflow": ("tensorflow", "tensorflow-cpu"), "tf_keras": ("tf-keras",)}
    for dist in dists.get(module, (module,)):
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


def _loaded_libraries(pattern: str) -> list[str]:
    """Real paths of the shared libraries matching ``pattern`` mapped into this process."""
    found = set()
    with open("/proc/self/maps") as maps:
        for line in maps:
            path = line.split()[-1]
            if re.search(pattern, os.path.basename(path)):
                found.add(os.path.realpath(path))
    return sorted(found)


def _linked_libraries(shared_object: str, pattern: str) -> list[str]:
    """Real paths of the libraries matching ``pattern`` that ``ldd`` resolves for a shared object."""
    try:
        out = subprocess.run(["ldd", shared_object], capture_output=True, text=True).stdout
    except OSError:
        return []
    paths = set()
    for line in out.splitlines():
        m = re.match(r"\s*(\S+) => (\S+)", line)
        if m and re.search(pattern, m.group(1)) and os.path.exists(m.group(2)):
            paths.add(os.path.realpath(m.group(2)))
    return sorted(paths)


def check_mpi(report: Report) -> None:
    """mpirun on PATH and the MPI library mpi4py loads (read before Horovod loads its own)."""
    mpirun = shutil.which("mpirun")
    version = None
    if mpirun:
        out = subprocess.run([mpirun, "--version"], capture_output=True, text=True)
        version = (out.stdout or out.stderr).strip().splitlines()[0] if out.returncode == 0 else None
    report.facts["mpirun"] = {"path": mpirun, "version": version}
    if not mpirun:
        report.problem("warning", "mpirun is not on PATH: only horovodrun with Gloo can launch",
                       "apt-get install openmpi-bin libopenmpi-dev, or load your cluster's MPI "
                       "module, then " + SETUP)
    try:
        import mpi4py

        mpi4py.rc.initialize = False  # only read what it loaded; MPI_Init stays the launcher's
        from mpi4py import MPI

        report.facts["mpi4py"] = {"version": mpi4py.__version__,
                                  "library": MPI.Get_library_version().strip("\x00 \n").splitlines()[0],
                                  "library_files": _loaded_libraries(r"^libmpi(ch)?\.so")}
    except Exception as e:  # noqa: BLE001
        report.facts["mpi4py"] = None
        report.problem("warning", f"mpi4py does not import ({type(e).__name__}: {e})".splitlines()[0],
                       f"{SETUP} installs mpi4py for the MPI on PATH")
        return
    lib = report.facts["mpi4py"]["library"]
    if version and _mpi_release(version) and _mpi_release(version) != _mpi_release(lib):
        report.problem("error", f"mpirun is {version!r} but mpi4py loads {lib!r}",
                       "put one MPI first on PATH and LD_LIBRARY_PATH (module load / export), then "
                       "pip install --force-reinstall --no-binary mpi4py mpi4py, and " + SETUP)


def _mpi_release(text: str) -> str | None:
    """'Open MPI 4.1.4' from mpirun's or the library's version line (implementation + version)."""
    m = re.search(r"(Open MPI|MPICH|Intel\(R\) MPI|MVAPICH2?)\D*(\d+(?:\.\d+)+)", text)
    return f"{m.group(1)} {m.group(2)}" if m else None


def check_horovod(report: Report) -> None:
    """Horovod's version and build: frameworks, controllers, GPU ops, and its MPI library."""
    version = _version("horovod")
    if version is None:
        report.facts["horovod"] = None
        report.problem("error", "horovod does not import", SETUP + " builds it with the fixes in "
                       "setup/horovod/")
        return
    build = {"version": version, "frameworks": [], "controllers": [], "tensor_operations": [],
             "cuda": False, "mpi_library_files": []}
    report.facts["horovod"] = build
    basics = None
    for name, module, framework in (("PyTorch", "horovod.torch", "torch"),
                                    ("TensorFlow", "horovod.tensorflow", "tensorflow")):
        if _version(framework) is None:
            continue
        try:
            with quiet_stderr():  # TensorFlow's start-up lines (common.world.quiet)
                mod = importlib.import_module(module)
        except Exception as e:  # noqa: BLE001 - an extension built for another framework version
            report.problem("error", f"{framework} is installed but {module} does not import: "
                           f"{str(e).splitlines()[0] if str(e) else type(e).__name__}",
                           f"Horovod was built against another {framework}: " + SETUP + " rebuilds "
                           "it (the wheel cache is keyed by framework versions)")
            continue
        build["frameworks"].append(name)
        basics = basics or mod
        lib = getattr(mod, "mpi_lib_v2", None) or getattr(mod, "mpi_lib", None)
        if lib is not None and getattr(lib, "__file__", None):
            build["mpi_library_files"] = sorted(set(build["mpi_library_files"]) | set(
                _linked_libraries(lib.__file__, r"^libmpi(ch)?\.so")))
    if basics is None:
        report.problem("error", "Horovod has no framework extension that imports here",
                       "install torch or tensorflow, then " + SETUP)
        return
    build["controllers"] = [n for n, f in (("MPI", basics.mpi_built), ("Gloo", basics.gloo_built))
                            if f()]
    build["tensor_operations"] = [n for n, f in (("NCCL", basics.nccl_built), ("MPI", basics.mpi_built),
                                                 ("Gloo", basics.gloo_built), ("DDL", basics.ddl_built),
                                                 ("CCL", basics.ccl_built)) if f()]
    build["cuda"] = bool(basics.cuda_built())
    if "MPI" not in build["controllers"] and report.facts.get("mpirun", {}).get("path"):
        report.problem("warning", "Horovod was built without MPI, so mpirun launches and "
                       "--mpi-groups do not work", "SETUP_MPI=1 " + SETUP)
    m4p = report.facts.get("mpi4py") or {}
    build["mpi4py_same_library"] = None
    if build["mpi_library_files"] and m4p.get("library_files"):
        same = bool(set(build["mpi_library_files"]) & set(m4p["library_files"]))
        build["mpi4py_same_library"] = same
        if not same:
            report.problem("error", f"mpi4py loads {m4p['library_files']} but Horovod is linked "
                           f"against {build['mpi_library_files']}: hvd.init(comm=...) would mix "
                           "two MPIs", "rebuild mpi4py against Horovod's MPI: MPICC=mpicc pip "
                           "install --force-reinstall --no-binary mpi4py mpi4py (or " + SETUP + ")")


def check_frameworks(report: Report) -> None:
    """Framework versions against the pins in versions.env."""
    pins = pinned_versions()
    found = {name: _version(module) for name, module in (
        ("torch", "torch"), ("torchvision", "torchvision"), ("tensorflow", "tensorflow"),
        ("keras", "keras"), ("tf_keras", "tf_keras"), ("mpi4py", "mpi4py"), ("numpy", "numpy"))}
    report.facts["frameworks"] = found
    if found["torch"] is None and found["tensorflow"] is None:
        report.problem("error", "neither torch nor tensorflow imports", SETUP)
    keys = {"torch": "TORCH_VERSION", "torchvision": "TORCHVISION_VERSION",
            "tensorflow": "TENSORFLOW_VERSION", "keras": "KERAS_VERSION",
            "tf_keras": "TF_KERAS_VERSION",
            "mpi4py": "MPI4PY_VERSION", "numpy": "NUMPY_VERSION"}
    for name, version in found.items():
        pin = pins.get(keys[name])
        if version and pin and version.split("+")[0] != pin:
            report.problem("warning", f"{name} is {version}, versions.env pins {pin} (the tested "
                           "combination)", SETUP + " installs the pinned versions")
    horovod = pins.get("HOROVOD_VERSION")
    if horovod and (report.facts.get("horovod") or {}).get("version") not in (None, horovod):
        report.problem("warning", f"horovod is {report.facts['horovod']['version']}, versions.env "
                       f"pins {horovod}", SETUP)


def check_gpus(report: Report) -> None:
    """Visible GPUs (through torch, else nvidia-smi) and whether Horovod can reduce on them."""
    gpus: list[str] = []
    torch_cuda = None
    if _version("torch") is not None:
        import torch

        torch_cuda = torch.version.cuda
        if torch.cuda.is_available():
            gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    elif shutil.which("nvidia-smi"):
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True).stdout
        gpus = [line.split(":", 1)[1].split("(")[0].strip() for line in out.splitlines() if ":" in line]
    report.facts["gpus"] = gpus
    report.facts["torch_cuda"] = torch_cuda
    build = report.facts.get("horovod") or {}
    if gpus and build and "NCCL" not in build.get("tensor_operations", []):
        report.problem("warning", f"{len(gpus)} GPU(s) visible but Horovod has no NCCL: GPU "
                       "gradients go through host memory", "SETUP_FLAVOR=gpu " + SETUP +
                       " builds Horovod with HOROVOD_GPU_OPERATIONS=NCCL")
    if gpus and os.environ.get("CUDA_VISIBLE_DEVICES") == "":
        report.problem("warning", "CUDA_VISIBLE_DEVICES is empty", "unset it")


def diagnose() -> Report:
    report = Report()
    report.facts["python"] = sys.version.split()[0]
    report.facts["root"] = os.geteuid() == 0
    check_mpi(report)  # first: it reads which libmpi mpi4py mapped before Horovod maps its own
    check_horovod(report)
    check_frameworks(report)
    check_gpus(report)
    if report.facts["root"] and (report.facts.get("mpirun") or {}).get("path"):
        report.problem("warning", "running as root: Open MPI's mpirun refuses root unless told",
                       "add --allow-run-as-root to mpirun (horovodrun adds it itself)")
    return report


def render(report: Report) -> str:
    f = report.facts
    hv = f.get("horovod") or {}
    mpirun = f.get("mpirun") or {}
    m4p = f.get("mpi4py") or {}
    fw = f.get("frameworks") or {}
    lines = [
        f"python       {f['python']}",
        f"horovod      {hv.get('version', 'not importable')}",
    ]
    if hv:
        lines += [
            f"  frameworks   {', '.join(hv['frameworks']) or 'none'}",
            f"  controllers  {', '.join(hv['controllers']) or 'none'}",
            f"  tensor ops   {', '.join(hv['tensor_operations']) or 'none'}"
            f"{' (CUDA built)' if hv['cuda'] else ''}",
            f"  its MPI      {', '.join(hv['mpi_library_files']) or '-'}",
        ]
    same = hv.get("mpi4py_same_library")
    lines += [
        f"mpirun       {mpirun.get('version') or 'not found'}",
        f"mpi4py       {m4p.get('version', 'not importable')}"
        + (f": {m4p['library']}" if m4p else ""),
        f"  its MPI      {', '.join(m4p.get('library_files', [])) or '-'}"
        + ("" if same is None else (" (same as Horovod's)" if same else " (NOT Horovod's)")),
        "versions     " + ", ".join(f"{k} {v}" for k, v in fw.items() if v),
        f"GPUs         {len(f['gpus'])}" + (f": {', '.join(f['gpus'])}" if f["gpus"] else "")
        + (f" (torch built for CUDA {f['torch_cuda']})" if f.get("torch_cuda") else ""),
    ]
    for p in report.problems:
        lines.append(f"{p['level']}: {p['problem']}\n  fix: {p['fix']}")
    lines.append("doctor: " + ("ok" if report.ok else "problems found") +
                 f" ({len(report.problems)} note(s))")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m common.launch.doctor",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print the report as one JSON object")
    args = parser.parse_args(argv)
    # horovod.tensorflow imports TF: keep it quiet. Set here, for the doctor's own process; set
    # at import it leaked into every process started by a program that merely imported this
    # module (a test process's later jobs lost TensorFlow's start-up lines).
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    report = diagnose()
    if args.json:
        print(json.dumps({"ok": report.ok, **report.facts, "problems": report.problems}, indent=1))
    else:
        print(render(report))
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
