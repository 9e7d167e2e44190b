#!/usr/bin/env bash
# harness.sh (WORK IN PROGRESS, issue 13): build docker/Dockerfile.cpu unchanged and train in it on a
# machine whose Docker engine cannot pull images: start or reach an engine, stand in for the base
# image with a debootstrapped Debian bookworm (its Python 3.11 and headers, the host CA bundle),
# build, run the demo training and the doctor.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
BASE=python:3.11-slim-bookworm
IMAGE=horovod-recipes:cpu
MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
say() { echo "docker-test: $*"; }

ensure_engine() {
  docker info >/dev/null 2>&1 && return
  if ! command -v dockerd >/dev/null; then
    [ "$(id -u)" = 0 ] || { say "no Docker engine and not root: skipped"; exit 0; }
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker.io debootstrap
  fi
  (nohup dockerd >/tmp/horovod-recipes-dockerd.log 2>&1 &)
  for _ in $(seq 60); do docker info >/dev/null 2>&1 && return; sleep 1; done
  say "dockerd did not start (see /tmp/horovod-recipes-dockerd.log): skipped"; exit 0
}

stand_in_base() {
  docker image inspect "$BASE" >/dev/null 2>&1 && return
  docker pull "$BASE" >/dev/null 2>&1 && return
  say "$BASE cannot be pulled: building a stand-in (debootstrap bookworm, Python 3.11)"
  command -v debootstrap >/dev/null || apt-get install -y -qq debootstrap
  local root; root="$(mktemp -d)"
  debootstrap --variant=minbase --include=python3,python3-dev,python3-venv,python3-pip,ca-certificates \
    bookworm "$root" "$MIRROR" >/dev/null
  ln -sf /usr/bin/python3 "$root/usr/local/bin/python"
  cp /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/ca-certificates.crt"
  rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
  tar -C "$root" -c . | docker import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt' --change 'ENV LANG=C.UTF-8' \
    --change 'CMD ["python3"]' - "$BASE" >/dev/null
  rm -rf "$root"
}

build() {
  local args=()
  if ! curl -sfI --max-time 10 https://download.pytorch.org/whl/cpu/ >/dev/null; then
    say "PyTorch's CPU wheel index cannot be reached: torch comes from PyPI (its CUDA build)"
    args=(--build-arg TORCH_INDEX_URL=)
  fi
  docker build -f docker/Dockerfile.cpu "${args[@]}" -t "$IMAGE" .
}

ensure_engine
stand_in_base
build
out="$(docker run --rm "$IMAGE" 2>&1)"
echo "$out" | tail -3
echo "$out" | grep -q "final: val accuracy" || { say "the demo training printed no final line"; exit 1; }
docker run --rm "$IMAGE" python -m common.doctor
say "ok"
