"""A real one-node SLURM cluster for the session: munged, slurmctld and slurmd of Debian's
slurm-wlm (installed by setup/slurm.sh), configured in a temporary folder, stopped at the end.

Nothing outside that folder is read or written: the daemons get their configuration, state,
logs, ports and MUNGE socket from it, and every SLURM command a test runs gets ``SLURM_CONF``
pointing there. Without slurm-wlm (not root, or ``SETUP_SKIP_APT=1``), the tests that use it
are skipped, saying why.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest

from tests.support import SlurmCluster, job_env

DAEMONS = ("munged", "slurmctld", "slurmd")
_UP_S = 60  # how long the daemons may take to answer


def _command(name: str) -> str | None:
    return shutil.which(name) or (f"/usr/sbin/{name}" if Path(f"/usr/sbin/{name}").exists() else None)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _config(folder: Path, node: str, cpus: int) -> str:
    return f"""ClusterName=hvdtest
SlurmctldHost={node}(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={folder}/munge.socket,cred_expire=5
SlurmctldPort={_free_port()}
SlurmdPort={_free_port()}
StateSaveLocation={folder}/state
SlurmdSpoolDir={folder}/spool
SlurmctldPidFile={folder}/slurmctld.pid
SlurmdPidFile={folder}/slurmd.pid
SlurmctldLogFile={folder}/slurmctld.log
SlurmdLogFile={folder}/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/affinity
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
MpiDefault=none
ReturnToService=2
KillWait=15
MinJobAge=600
SchedulerParameters=sched_interval=1
NodeName={node} NodeAddr=127.0.0.1 CPUs={cpus} State=UNKNOWN
PartitionName=test Nodes={node} Default=YES MaxTime=INFINITE State=UP OverSubscribe=YES
"""


@pytest.fixture(scope="session")
def slurm(tmp_path_factory):
    """The running cluster (``tests.support.SlurmCluster``); its daemons end with the session."""
    missing = [name for name in (*DAEMONS, "sbatch", "srun", "scontrol") if not _command(name)]
    if missing:
        pytest.skip(f"slurm-wlm is not installed ({', '.join(missing)} missing): setup/slurm.sh "
                    "installs it as root")
    folder = tmp_path_factory.mktemp("slurm")
    for sub in ("state", "spool"):
        (folder / sub).mkdir()
    node = socket.gethostname().split(".")[0]
    conf = folder / "slurm.conf"
    conf.write_text(_config(folder, node, max(os.cpu_count() or 2, 2)))
    key = folder / "munge.key"
    key.write_bytes(os.urandom(1024))
    key.chmod(0o400)
    env = {**job_env(), "SLURM_CONF": str(conf)}
    logs = folder / "daemons.log"
    daemons: list[subprocess.Popen] = []
    with logs.open("ab") as log:
        def start(*cmd: str) -> None:
            daemons.append(subprocess.Popen(cmd, env=env, stdout=log, stderr=log,
                                            start_new_session=True))

        start(_command("munged"), "--foreground", "--force", f"--key-file={key}",
              f"--socket={folder}/munge.socket", f"--pid-file={folder}/munged.pid",
              f"--log-file={folder}/munged.log", f"--seed-file={folder}/munged.seed")
        _wait_for(lambda: (folder / "munge.socket").exists(), "munged's socket", daemons, logs)
        start(_command("slurmctld"), "-D", "-i", "-f", str(conf))
        start(_command("slurmd"), "-D", "-f", str(conf), "-N", node)
        cluster = SlurmCluster(folder, env, node)
        _wait_for(lambda: cluster.node_state() in ("idle", "mixed", "allocated"),
                  "the node to be idle", daemons, logs, cluster)
    try:
        yield cluster
    finally:
        subprocess.run(["scancel", "--full", "--user", str(os.getuid())], env=env,
                       capture_output=True, timeout=30)
        for daemon in reversed(daemons):  # slurmd, slurmctld, then munged
            daemon.terminate()
            try:
                daemon.wait(timeout=20)
            except subprocess.TimeoutExpired:
                daemon.kill()
                daemon.wait()


def _wait_for(ready, what: str, daemons, logs: Path, cluster=None) -> None:
    deadline = time.monotonic() + _UP_S
    while not ready():
        dead = [d.args[0] for d in daemons if d.poll() is not None]
        if dead or time.monotonic() > deadline:
            for d in daemons:
                if d.poll() is None:
                    d.kill()
            detail = cluster.node_state() if cluster else ""
            pytest.fail(f"the SLURM cluster did not come up waiting for {what} ({detail}; "
                        f"exited: {dead}):\n{logs.read_text()[-3000:]}")
        time.sleep(0.3)

