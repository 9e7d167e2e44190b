#!/usr/bin/env bash
# ssh-user.sh: the images' non-root user `hvd` (uid 1000) and its own sshd on port 2222, for
# horovodrun/mpirun across containers. Run once at image build, as root.
#
# Every container of an image shares the key pair made here, so its containers trust each other
# and nobody else; for anything beyond one trusted host, mount your own keys over /home/hvd/.ssh.
set -euo pipefail
useradd --uid 1000 --create-home --shell /bin/bash hvd
ssh_dir=/home/hvd/.ssh
mkdir -p "$ssh_dir" /run/sshd
ssh-keygen -q -t ed25519 -N "" -f "$ssh_dir/id_ed25519"
ssh-keygen -q -t ed25519 -N "" -f "$ssh_dir/host_ed25519"
cp "$ssh_dir/id_ed25519.pub" "$ssh_dir/authorized_keys"
# sshd as the user itself: its own host key, pid file and port; keys only.
printf '%s\n' "Port 2222" "HostKey $ssh_dir/host_ed25519" "PidFile $ssh_dir/sshd.pid" \
  "UsePAM no" "PasswordAuthentication no" "PermitUserEnvironment yes" "AllowUsers hvd" \
  >"$ssh_dir/sshd_config"
printf '%s\n' "Host *" "  Port 2222" "  StrictHostKeyChecking no" "  UserKnownHostsFile /dev/null" \
  "  LogLevel ERROR" >"$ssh_dir/config"
# Remote commands (horovodrun's, mpirun's orted) find the venv and CUDA through this PATH.
echo "PATH=$PATH" >"$ssh_dir/environment"
[ -n "${LD_LIBRARY_PATH:-}" ] && echo "LD_LIBRARY_PATH=$LD_LIBRARY_PATH" >>"$ssh_dir/environment"
chmod 700 "$ssh_dir" && chmod 600 "$ssh_dir"/*
# The folder compose.yaml mounts a volume on: made here so the volume belongs to hvd.
mkdir -p /home/hvd/runs
chown -R hvd:hvd "$ssh_dir" /home/hvd/runs
