"""Tests of common/world/runtime.py: the runtime settings the core chooses, the launcher's local size, the
cgroup CPU quota."""

from __future__ import annotations

import os

import pytest

from common.world.runtime import (
    apply_runtime_settings,
    cgroup_cpu_quota,
    cpu_cores,
    launched_local_size,
    launched_world_size,
    runtime_settings,
    stall_settings,
)


def test_settings_follow_the_host_and_the_controller():
    # A CPU host under MPI: ranks waiting in MPI yield their core; the cycle time stays Horovod's.
    assert runtime_settings(local_size=2, cores=2, on_gpu=False) == {"OMPI_MCA_mpi_yield_when_idle": "1"}
    assert runtime_settings(local_size=1, cores=16, on_gpu=False) == {"OMPI_MCA_mpi_yield_when_idle": "1"}
    # Under Gloo there is no MPI; a CPU host negotiates less often than Horovod's default 1 ms.
    gloo = runtime_settings(local_size=2, cores=2, on_gpu=False, controller="gloo")
    assert list(gloo) == ["HOROVOD_CYCLE_TIME"] and float(gloo["HOROVOD_CYCLE_TIME"]) > 1
    # GPU hosts keep Horovod's cycle time (a step is short there); under MPI they yield only when
    # every core has a worker.
    assert runtime_settings(local_size=8, cores=64, on_gpu=True) == {}
    assert runtime_settings(local_size=8, cores=8, on_gpu=True) == {"OMPI_MCA_mpi_yield_when_idle": "1"}
    assert runtime_settings(local_size=8, cores=8, on_gpu=True, controller="gloo") == {}


def test_a_one_host_horovodrun_job_leaves_out_open_mpi_s_libfabric_transport():
    # horovodrun's own "-mca btl ^openib", every worker on this host: ofi off as well
    one_host = runtime_settings(local_size=2, cores=2, on_gpu=False, world_size=2, btl="^openib")
    assert one_host["OMPI_MCA_btl"] == "^openib,ofi"
    # across hosts ofi may be the fabric's transport; a user's own choice is kept; Gloo has no MPI
    assert "OMPI_MCA_btl" not in runtime_settings(local_size=2, cores=2, on_gpu=False,
                                                  world_size=4, btl="^openib")
    assert "OMPI_MCA_btl" not in runtime_settings(local_size=2, cores=2, on_gpu=False,
                                                  world_size=2, btl="self,tcp")
    assert "OMPI_MCA_btl" not in runtime_settings(local_size=2, cores=2, on_gpu=False,
                                                  controller="gloo", world_size=2, btl="^openib")
    # horovodrun's value is the launcher's, not the user's: the core's replaces it
    env = {"OMPI_MCA_btl": "^openib"}
    assert apply_runtime_settings(one_host, env)["OMPI_MCA_btl"] == "^openib,ofi (core)"
    assert env["OMPI_MCA_btl"] == "^openib,ofi"


def test_under_gloo_the_stall_watchdog_decides_before_gloo_s_own_timeout():
    env = {"HOROVOD_CONTROLLER": "gloo", "HOROVOD_GLOO_TIMEOUT_SECONDS": "30"}  # horovodrun's
    assert stall_settings(8, env) == {"HOROVOD_GLOO_TIMEOUT_SECONDS": "38 (core)"}
    assert env["HOROVOD_GLOO_TIMEOUT_SECONDS"] == "38"
    assert stall_settings(300, {"HOROVOD_CONTROLLER": "gloo"}) == {
        "HOROVOD_GLOO_TIMEOUT_SECONDS": "330 (core)"}
    # the user's own --gloo-timeout-seconds stays; MPI, no watchdog and elastic mode: untouched
    mine = {"HOROVOD_CONTROLLER": "gloo", "HOROVOD_GLOO_TIMEOUT_SECONDS": "45"}
    assert stall_settings(8, mine) == {"HOROVOD_GLOO_TIMEOUT_SECONDS": "45 (environment)"}
    for env in ({"HOROVOD_CONTROLLER": "mpi"}, {"HOROVOD_CONTROLLER": "gloo", "HOROVOD_ELASTIC": "1"}):
        assert stall_settings(8, env) == {}
    assert stall_settings(0, {"HOROVOD_CONTROLLER": "gloo"}) == {}


def test_a_value_in_the_environment_always_wins():
    env = {"HOROVOD_CYCLE_TIME": "3.5"}
    used = apply_runtime_settings({"HOROVOD_CYCLE_TIME": "10", "OMPI_MCA_mpi_yield_when_idle": "1"}, env)
    assert env == {"HOROVOD_CYCLE_TIME": "3.5", "OMPI_MCA_mpi_yield_when_idle": "1"}
    assert used == {"HOROVOD_CYCLE_TIME": "3.5 (environment)", "OMPI_MCA_mpi_yield_when_idle": "1 (core)"}


def test_local_size_comes_from_the_launcher():
    assert launched_local_size({}) == 1
    assert launched_local_size({"HOROVOD_LOCAL_SIZE": "4"}) == 4  # horovodrun
    assert launched_local_size({"OMPI_COMM_WORLD_LOCAL_SIZE": "3"}) == 3  # Open MPI's mpirun
    assert launched_local_size({"MPI_LOCALNRANKS": "2", "HOROVOD_LOCAL_SIZE": "x"}) == 2  # MPICH
    assert launched_world_size({}) == 1
    assert launched_world_size({"OMPI_COMM_WORLD_SIZE": "4"}) == 4
    assert launched_world_size({"PMI_SIZE": "6"}) == 6


def _cgroup(tmp_path, proc_line, files):
    """A fake cgroup mount (files: path under it -> text) and /proc/self/cgroup (proc_line)."""
    for rel, text in files.items():
        (tmp_path / "fs" / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "fs" / rel).write_text(text)
    (tmp_path / "proc").write_text(proc_line + "\n")
    return str(tmp_path / "fs"), str(tmp_path / "proc")


@pytest.mark.parametrize("proc_line, files, quota", [
    # cgroup v2: the process's own folder, or an ancestor's smaller limit
    ("0::/job", {"job/cpu.max": "150000 100000"}, 1.5),
    ("0::/a/b", {"a/cpu.max": "100000 100000", "a/b/cpu.max": "max 100000"}, 1.0),
    ("0::/", {"cpu.max": "max 100000"}, None),
    # cgroup v1 in a container without a cgroup namespace: the host's path does not exist there,
    # the mount's root is the container's own cgroup (what Docker gave each container here)
    ("4:cpu,cpuacct:/docker/abc", {"cpu,cpuacct/cpu.cfs_quota_us": "100000",
                                   "cpu,cpuacct/cpu.cfs_period_us": "100000"}, 1.0),
    ("4:cpu,cpuacct:/", {"cpu/cpu.cfs_quota_us": "-1", "cpu/cpu.cfs_period_us": "100000"}, None),
    ("9:name=systemd:/", {}, None),
])
def test_the_cgroup_cpu_quota_is_read_from_v1_and_v2(tmp_path, proc_line, files, quota):
    assert cgroup_cpu_quota(*_cgroup(tmp_path, proc_line, files)) == quota


def test_a_cpu_quota_caps_the_cores_the_threads_are_sized_for(tmp_path):
    cores = len(os.sched_getaffinity(0))
    assert cpu_cores(*_cgroup(tmp_path, "0::/", {})) == cores
    # 0.5 of a core still gets one thread; a quota above the affinity does not raise it
    assert cpu_cores(*_cgroup(tmp_path / "half", "0::/", {"cpu.max": "50000 100000"})) == 1
    assert cpu_cores(*_cgroup(tmp_path / "big", "0::/", {"cpu.max": f"{cores * 400000} 100000"})) == cores
