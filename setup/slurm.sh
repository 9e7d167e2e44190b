#!/usr/bin/env bash
# setup/slurm.sh: Debian's SLURM (slurmctld, slurmd, srun, sbatch) and MUNGE, for the tests that
# run recipes/slurm/horovod.sbatch on a real one-node cluster (tests/jobs/slurm). Run by
# `make test` and `make slurm-test`, not by `make setup`: a training machine needs no SLURM.
# Nothing is started or configured here: the tests' fixture (tests/jobs/slurm/conftest.py) starts
# munged, slurmctld and slurmd with a configuration in a temporary folder, and stops them.
#   SETUP_SKIP_APT=1   never call apt-get (without SLURM installed, those tests are skipped)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck source=../versions.env
source versions.env

have_all() {
  local cmd
  for cmd in slurmctld slurmd sbatch srun scontrol munged; do
    command -v "$cmd" >/dev/null || [ -x "/usr/sbin/$cmd" ] || return 1
  done
}

version() { echo "slurm: slurm-wlm $(dpkg-query -W -f='${Version}' slurmd 2>/dev/null || echo '(version unknown)')"; }

if have_all; then
  version
  exit 0
fi
if [ "${SETUP_SKIP_APT:-0}" = 1 ]; then
  echo "slurm: not installed and SETUP_SKIP_APT=1; the real-SLURM tests will be skipped"
  exit 0
fi
if [ "$(id -u)" != 0 ]; then
  echo "slurm: not installed and not root; the real-SLURM tests will be skipped (as root: apt-get install $SLURM_APT_PACKAGES)"
  exit 0
fi
# The packages' own services are not wanted (the fixture runs its own daemons): policy-rc.d
# keeps their postinst scripts from starting them.
policy=/usr/sbin/policy-rc.d
made_policy=0
if [ ! -e "$policy" ]; then
  printf '#!/bin/sh\nexit 101\n' > "$policy" && chmod +x "$policy" && made_policy=1
fi
trap '[ "$made_policy" = 1 ] && rm -f "$policy"' EXIT
apt-get update -qq
# shellcheck disable=SC2086
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $SLURM_APT_PACKAGES
version
