#!/usr/bin/env bash
# harness.sh: `make docker-test` - the Docker images and the 2-container cluster verified for real.
#
# On a machine whose Docker engine cannot pull images (as here: no registry reachable) it
#   1. reaches or starts an engine (as root: Debian's docker.io and docker-compose from apt);
#   2. stands in for the base image it cannot pull: a debootstrapped Debian bookworm with the same
#      Python 3.11 and its headers, tagged python:3.11-slim-bookworm, carrying the host's CA
#      bundle (PIP_CERT) so that pip inside the build reaches PyPI;
#   3. builds docker/Dockerfile.cpu unchanged (build arguments only: torch from PyPI when
#      PyTorch's CPU wheel index cannot be reached, and it says so);
#   4. runs the image's default command (the demo training, 2 workers) and `common.launch.doctor`;
#   5. runs docker/compose.yaml's cluster: horovodrun across the containers over ssh (compose's
#      own command, the PyTorch recipe), mpirun across them (the TensorFlow recipe), and under
#      each launcher a run whose worker container is killed mid-run: the job must end (no hang)
#      and a rerun resumes from the checkpoint rank 0 saved; then rank 1's process stopped
#      (SIGSTOP) in the worker container: the stall watchdog ends the job within
#      --stall-timeout, naming rank 1 on worker; then the worker container restarted under
#      `hvd-launch --max-restarts 1`: the run is relaunched, resumes and finishes;
#   6. checks the scaling projection against links shaped with tc: on compose.bench.yaml's rig
#      (a core per container, this checkout mounted), each container's link limited by a token
#      bucket (tbf) to each rate of DOCKER_TEST_LINKS in turn, the scaling report runs the CIFAR
#      recipe on 1 and 2 workers with --project and --link measure; the predicted efficiency of
#      2 workers must be within 10 points of the measured one at two links or more. The reports
#      and their comparison (benchmarks/projection.py) land in DOCKER_TEST_SHAPED_OUT.
# Where no engine can run it says so and exits 0 (skipped). Exit 1 on any failed check.
#
# Environment: DEBIAN_MIRROR (debootstrap's), DOCKER_TEST_KILL_TIMEOUT (s, default 120),
# DOCKER_TEST_STEPS (default "demo cluster shaped"), DOCKER_TEST_NO_BUILD=1 (use the image there
# is), DOCKER_TEST_LINKS (default "1gbit 100mbit 25mbit"), DOCKER_TEST_SHAPED_OUT (default
# runs/docker-shaped).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
BASE=python:3.11-slim-bookworm
IMAGE=horovod-recipes:cpu
MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
KILL_TIMEOUT="${DOCKER_TEST_KILL_TIMEOUT:-120}"
PROJECT=horovod-recipes-test
NEED_GB=25  # the image is ~9.4 GB (torch's CUDA wheel from PyPI); committing a layer takes twice that
SSHD="/usr/sbin/sshd -f /home/hvd/.ssh/sshd_config"
RECIPE=/opt/horovod-recipes/recipes/pytorch/mnist.py
TF_RECIPE=/opt/horovod-recipes/recipes/tensorflow/mnist.py
HOSTS="-np 2 -H launcher:1,worker:1"
T0=$SECONDS
say() { echo "docker-test [$((SECONDS - T0))s]: $*"; }
fail() { say "FAILED: $*"; exit 1; }
# What the recipes print: without TensorFlow's start-up lines (issue 14 quiets those at the source)
# and without Open MPI's per-rank tags ([1,0]<stdout>:).
ours() {
  { grep -vE "absl::|oneDNN|cuda drivers|cpu_feature_guard|AVX|TF_ENABLE_ONEDNN" || true; } \
    | sed -E 's/^\[[0-9]+,[0-9]+\]<std(out|err)>://'
}
# show PATTERN: the lines of stdin that match, indented (none is not an error here).
show() { { grep -E "$1" || true; } | sed 's/^/  /'; }

apt_install() {
  [ "$(id -u)" = 0 ] || return 1
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

ensure_engine() {
  docker info >/dev/null 2>&1 && return
  if ! command -v dockerd >/dev/null; then
    apt_install docker.io || { say "no Docker engine, and docker.io cannot be installed (not root): skipped"; exit 0; }
  fi
  say "starting dockerd (log: /tmp/horovod-recipes-dockerd.log)"
  (nohup dockerd >/tmp/horovod-recipes-dockerd.log 2>&1 &)
  for _ in $(seq 60); do docker info >/dev/null 2>&1 && return; sleep 1; done
  say "dockerd did not start (see /tmp/horovod-recipes-dockerd.log): skipped"; exit 0
}

# COMPOSE: Docker's compose plugin if there is one, else Debian's docker-compose (1.29).
find_compose() {
  if docker compose version >/dev/null 2>&1; then COMPOSE=(docker compose)
  else
    command -v docker-compose >/dev/null || apt_install docker-compose || fail "no docker compose"
    COMPOSE=(docker-compose)
  fi
  COMPOSE+=(-p "$PROJECT" -f docker/compose.yaml)
  say "compose: $("${COMPOSE[@]}" version 2>/dev/null | head -1)"
}

check_disk() {
  local root free
  root="$(docker info -f '{{.DockerRootDir}}')"
  free=$(( $(df -Pk "$root" | awk 'NR==2 {print $4}') / 1024 / 1024 ))
  [ "$free" -ge "$NEED_GB" ] \
    || fail "$free GB free under $root; the build needs about $NEED_GB GB (docker image prune, or free disk)"
}

stand_in_base() {
  docker image inspect "$BASE" >/dev/null 2>&1 && { say "$BASE: present"; return; }
  docker pull "$BASE" >/dev/null 2>&1 && { say "$BASE: pulled"; return; }
  say "$BASE cannot be pulled: building a stand-in (debootstrap bookworm, its Python 3.11 and headers)"
  command -v debootstrap >/dev/null || apt_install debootstrap || fail "debootstrap missing"
  local root; root="$(mktemp -d)"
  debootstrap --variant=minbase --include=python3,python3-dev,python3-venv,python3-pip,ca-certificates \
    bookworm "$root" "$MIRROR" >/dev/null || fail "debootstrap"
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
    say "PyTorch's CPU wheel index cannot be reached: torch comes from PyPI (its CUDA build, a larger image)"
    args=(--build-arg TORCH_INDEX_URL=)
  fi
  local start=$SECONDS
  docker build -f docker/Dockerfile.cpu "${args[@]}" -t "$IMAGE" . >/tmp/horovod-recipes-build.log 2>&1 \
    || { tail -30 /tmp/horovod-recipes-build.log; fail "docker build (log: /tmp/horovod-recipes-build.log)"; }
  docker image prune -f >/dev/null  # the image this build replaced
  say "built $IMAGE in $((SECONDS - start)) s, $(docker image inspect -f '{{.Size}}' "$IMAGE" | awk '{printf "%.2f GB", $1/1e9}')"
}

demo() {
  local out
  out="$(docker run --rm "$IMAGE" 2>&1 | ours)"
  echo "$out" | show "^(runtime settings|final):"
  grep -q "^final: val accuracy .* on 2 worker(s)" <<<"$out" || fail "the demo printed no final line"
  out="$(docker run --rm "$IMAGE" python -m common.launch.doctor 2>&1)" || { echo "$out"; fail "common.launch.doctor inside the image"; }
  echo "$out" | ours | show "."
  say "demo and doctor: ok"
}

# launch COMMAND...: runs COMMAND in a launcher container (its sshd up) beside the worker.
launch() {
  "${COMPOSE[@]}" run --rm --no-deps launcher bash -c "$SSHD && $*" 2>&1 | ours
}

cluster() {
  "${COMPOSE[@]}" down -v >/dev/null 2>&1 || true
  local out
  # 1. compose's own command: horovodrun from launcher over ssh to worker (PyTorch recipe).
  out="$("${COMPOSE[@]}" up --no-build --no-color --abort-on-container-exit --exit-code-from launcher 2>&1 \
    | sed -E 's/^[a-zA-Z0-9_-]+ +\| //' | ours)" \
    || { echo "$out" | tail -20; fail "compose up (horovodrun across the containers)"; }
  echo "$out" | show "^(runtime settings|final):"
  grep -q "^final: val accuracy .* on 2 worker(s)" <<<"$out" || fail "horovodrun across the containers: no final line"
  say "horovodrun -H launcher:1,worker:1 (compose up): ok"

  "${COMPOSE[@]}" up -d --no-build worker >/dev/null 2>&1
  # 2. each rank on its own container, then the TensorFlow recipe, under mpirun.
  out="$(launch "mpirun $HOSTS hostname && mpirun $HOSTS python $TF_RECIPE --epochs 2 \
    --checkpoint-dir runs/mpirun/checkpoints --metrics-file runs/mpirun/metrics.jsonl")" || true
  [ "$(echo "$out" | grep -xE 'launcher|worker' | sort | tr '\n' ' ')" = "launcher worker " ] \
    || { echo "$out" | tail -20; fail "mpirun did not start one rank in each container"; }
  grep -q "^final: val accuracy .* on 2 worker(s)" <<<"$out" || { echo "$out" | tail -20; fail "mpirun across the containers"; }
  echo "$out" | show "^final:"
  say "mpirun -H launcher:1,worker:1: ok (one rank in each container; TensorFlow recipe)"

  # 3. kill the worker container mid-run, under each launcher: the job ends, the rerun resumes.
  local launcher
  for launcher in "horovodrun -p 2222" mpirun; do
    "${COMPOSE[@]}" up -d --no-build worker >/dev/null 2>&1
    kill_worker "$launcher"
  done
  # 4. the worker container's training process stopped: the stall watchdog ends the job, naming
  #    the rank and its container (its channel to rank 0 crosses the containers' network).
  "${COMPOSE[@]}" up -d --no-build worker >/dev/null 2>&1
  stall_worker
  # 5. the worker container restarted mid-run under hvd-launch --max-restarts 1: the run is
  #    relaunched, resumes from its checkpoint and finishes.
  "${COMPOSE[@]}" up -d --no-build worker >/dev/null 2>&1
  restart_worker
  "${COMPOSE[@]}" down -v >/dev/null 2>&1
}

# start_job NAME LOG COMMAND: COMMAND in a launcher container in the background ($JOB), once its
# run has reached epoch 3 (or fail).
start_job() {
  local name="$1" log="$2"; shift 2
  "${COMPOSE[@]}" run --rm --no-deps launcher bash -c "$SSHD && $*" >"$log" 2>&1 &
  JOB=$!
  for _ in $(seq 600); do grep -q "epoch 3/" "$log" && break; sleep 0.2; done
  grep -q "epoch 3/" "$log" || { tail -20 "$log"; fail "$name: no epoch 3"; }
  kill -0 "$JOB" 2>/dev/null || fail "$name: the job ended before the fault"
}

# wait_job NAME BOUND: wait for $JOB at most BOUND seconds (a hang fails); its status in $RC.
wait_job() {
  local name="$1" bound="$2" t0=$SECONDS
  while kill -0 "$JOB" 2>/dev/null && [ $((SECONDS - t0)) -lt "$bound" ]; do sleep 0.5; done
  if kill -0 "$JOB" 2>/dev/null; then
    docker ps -q --filter "name=${PROJECT}_launcher_run" --filter "name=${PROJECT}-launcher-run" | xargs -r docker kill
    fail "$name: still running $bound s after the fault (a hang)"
  fi
  RC=0
  wait "$JOB" || RC=$?
}

stall_worker() {
  local log stall=10 pids
  log="$(mktemp)"
  start_job stall "$log" "mpirun $HOSTS python $RECIPE --epochs 60 --stall-timeout $stall \
    --checkpoint-dir runs/stall/checkpoints --metrics-file runs/stall/metrics.jsonl"
  # The container's processes are this host's: stop the recipe's (rank 1's), not sshd.
  pids="$(docker top "$("${COMPOSE[@]}" ps -q worker)" -eo pid,args | awk '/python .*mnist.py/ {print $1}')"
  [ -n "$pids" ] || fail "stall: no training process in the worker container"
  kill -STOP $pids
  local stopped=$SECONDS
  wait_job stall $((stall + 60))
  local took=$((SECONDS - stopped))
  kill -CONT $pids 2>/dev/null || true
  [ "$RC" = 124 ] || { tail -20 "$log"; fail "stall: exit status $RC, not 124"; }
  grep -qE "error: stalled: no progress for [0-9]+ s \(--stall-timeout $stall\); rank 1 on worker stopped answering" "$log" \
    || { tail -20 "$log"; fail "stall: no verdict naming rank 1 on worker"; }
  [ "$took" -le $((stall + 30)) ] || fail "stall: the job ended $took s after the stop (--stall-timeout $stall)"
  say "stall: rank 1's process stopped in the worker container; the job ended $took s later, exit 124: $(grep -oE "rank 1 on worker stopped answering [0-9]+ s ago" "$log" | head -1)"
  rm -f "$log"
}

restart_worker() {
  local log
  log="$(mktemp)"
  start_job restart "$log" "hvd-launch --max-restarts 1 --restart-backoff 10 mpirun $HOSTS \
    python $RECIPE --epochs 8 --checkpoint-dir runs/restart/checkpoints \
    --metrics-file runs/restart/metrics.jsonl"
  docker restart -t 0 "$("${COMPOSE[@]}" ps -q worker)" >/dev/null
  local restarted=$SECONDS
  wait_job restart 600
  [ "$RC" = 0 ] || { tail -30 "$log"; fail "restart: exit status $RC after the worker container's restart"; }
  grep -q "hvd-launch: restart 1 " "$log" || { tail -30 "$log"; fail "restart: no relaunch line"; }
  grep -qE "resumed from .*\(([2-8]) epoch\(s\)" "$log" || { tail -30 "$log"; fail "restart: the relaunch did not resume from a checkpoint of epoch 2 or later"; }
  grep -qE "final: val accuracy .* on 2 worker\(s\)" "$log" || { tail -30 "$log"; fail "restart: the relaunched run did not finish"; }
  say "restart: worker container restarted at epoch 3; hvd-launch relaunched, resumed and finished $((SECONDS - restarted)) s later: $(grep -oE "hvd-launch: restart 1 [^;]*" "$log" | head -1)"
  rm -f "$log"
}

# shape CONTAINER RATE: its egress limited to RATE by a token bucket (tbf; Debian's tc, run in
# the container's network namespace, so the image needs neither tc nor NET_ADMIN); "none" lifts
# it. The bucket holds 2 ms of the rate (at least 16 KB): a burst, not a faster link.
shape() {
  local pid burst
  pid="$(docker inspect -f '{{.State.Pid}}' "$1")"
  if [ "$2" = none ]; then nsenter -t "$pid" -n tc qdisc del dev eth0 root 2>/dev/null || true; return; fi
  burst=$(python3 -c "import re,sys; m=re.fullmatch(r'([0-9.]+)([kmg])bit', sys.argv[1]); \
print(max(16384, int(float(m[1]) * {'k': 1e3, 'm': 1e6, 'g': 1e9}[m[2]] / 8 * 2e-3))) if m else sys.exit(1)" "$2") \
    || fail "shaped: bad rate $2 (e.g. 100mbit, 1gbit)"
  nsenter -t "$pid" -n tc qdisc replace dev eth0 root tbf rate "$2" burst "$burst" latency 100ms \
    || fail "shaped: tc could not shape $1's link (tbf)"
}

shaped_links() {
  local links="${DOCKER_TEST_LINKS:-1gbit 100mbit 25mbit}" out="${DOCKER_TEST_SHAPED_OUT:-runs/docker-shaped}"
  if [ "$(id -u)" != 0 ] || ! command -v nsenter >/dev/null; then
    say "shaped links: skipped (shaping a container's link needs root, nsenter and tc here)"; return
  fi
  command -v tc >/dev/null || apt_install iproute2 || fail "shaped: no tc (iproute2)"
  local bench=("${COMPOSE[@]}" -f docker/compose.bench.yaml) rig="$PROJECT-bench" c
  "${bench[@]}" up -d --no-build worker >/dev/null 2>&1
  docker rm -f "$rig" >/dev/null 2>&1 || true
  "${bench[@]}" run -d --no-deps --name "$rig" launcher bash -c "$SSHD && sleep infinity" >/dev/null 2>&1
  local worker; worker="$("${COMPOSE[@]}" ps -q worker)"
  for c in "$rig" "$worker"; do  # the same generated CIFAR-10 on both hosts
    docker exec -w /opt/horovod-recipes "$c" python -c \
      "from common.data.datasets import write_cifar10; write_cifar10('/tmp/cifar', 128, 64)" \
      || fail "shaped: generating the data in $c"
  done
  rm -rf "$out" && mkdir -p "$out"
  local rate reports=()
  for rate in $links; do
    shape "$rig" "$rate"; shape "$worker" "$rate"
    docker exec -w /opt/horovod-recipes "$rig" python -m benchmarks.scaling --np 1,2 \
      --launcher mpirun --hosts launcher:1,worker:1 --rounds 3 --out "/home/hvd/runs/shaped/$rate" \
      --project 8,32,128 --link measure -- recipes/pytorch/cifar10_resnet.py --data-dir /tmp/cifar \
      --epochs 3 --batch-size 32 >"$out/$rate.log" 2>&1 \
      || { tail -20 "$out/$rate.log"; fail "shaped: the scaling report over $rate"; }
    docker cp "$rig:/home/hvd/runs/shaped/$rate" "$out/$rate" >/dev/null
    reports+=("/home/hvd/runs/shaped/$rate/scaling.json")
    say "shaped link $rate: $(grep -E '^\| [^|]+ \| 2 \| [0-9]+% \|' "$out/$rate/scaling.md" | tail -1)"
  done
  shape "$rig" none; shape "$worker" none
  docker exec -w /opt/horovod-recipes "$rig" python -m benchmarks.projection "${reports[@]}" \
    --out /home/hvd/runs/shaped/compared | sed 's/^/  /'
  docker cp "$rig:/home/hvd/runs/shaped/compared.md" "$out/" >/dev/null
  docker cp "$rig:/home/hvd/runs/shaped/compared.png" "$out/" >/dev/null
  docker rm -f "$rig" >/dev/null
  local close
  close=$(python3 -c "import re,sys; print(sum(abs(int(d)) <= 10 for d in re.findall(r'([+-]?[0-9]+) points', open(sys.argv[1]).read())))" "$out/compared.md")
  [ "$close" -ge 2 ] || fail "shaped: the projection is within 10 points of the measured efficiency at $close link(s), not 2 or more ($out/compared.md)"
  say "shaped links: predicted within 10 points of measured at $close of $(wc -w <<<"$links") links ($out/compared.md, .png)"
}

kill_worker() {
  local launcher="$1" log name epochs=60
  name="${launcher%% *}"
  log="$(mktemp)"
  local args="python $RECIPE --epochs $epochs --checkpoint-dir runs/kill-$name/checkpoints \
    --metrics-file runs/kill-$name/metrics.jsonl"
  # Unfiltered (a filter would hold the lines back): the tags stay, so match anywhere in a line.
  "${COMPOSE[@]}" run --rm --no-deps launcher bash -c "$SSHD && $launcher $HOSTS $args" >"$log" 2>&1 &
  local job=$!
  for _ in $(seq 600); do grep -q "epoch 3/" "$log" && break; sleep 0.2; done
  grep -q "epoch 3/" "$log" || { tail -20 "$log"; fail "$name: no epoch 3 before the kill"; }
  kill -0 "$job" 2>/dev/null || fail "$name: the job ended before the worker could be killed"
  docker kill "$("${COMPOSE[@]}" ps -q worker)" >/dev/null
  local killed=$SECONDS before
  before="$(grep -oE "epoch [0-9]+/$epochs" "$log" | tail -1)"
  while kill -0 "$job" 2>/dev/null && [ $((SECONDS - killed)) -lt "$KILL_TIMEOUT" ]; do sleep 1; done
  if kill -0 "$job" 2>/dev/null; then
    docker ps -q --filter "name=${PROJECT}_launcher_run" --filter "name=${PROJECT}-launcher-run" | xargs -r docker kill
    fail "$name: still running $KILL_TIMEOUT s after the worker container was killed (a hang)"
  fi
  local rc=0
  wait "$job" || rc=$?
  [ "$rc" != 0 ] || fail "$name: the job exited 0 although its worker was killed"
  grep -q "final:" "$log" && fail "$name: the run finished before the kill"
  say "$name: worker container killed after $before; the job ended $((SECONDS - killed)) s later (exit $rc)"
  "${COMPOSE[@]}" up -d --no-build worker >/dev/null 2>&1
  local out
  out="$(launch "$launcher $HOSTS $args")" || true
  echo "$out" | show "^(resumed|final)"
  grep -qE "^resumed from .*\(([3-9]|[1-5][0-9]) epoch\(s\)" <<<"$out" \
    || { echo "$out" | tail -20; fail "$name: the rerun did not resume from a checkpoint of epoch 3 to 59"; }
  grep -q "^final: val accuracy .* on 2 worker(s)" <<<"$out" || fail "$name: the resumed run did not finish"
  rm -f "$log"
}

ensure_engine
find_compose
stand_in_base
if [ "${DOCKER_TEST_NO_BUILD:-0}" = 1 ] && docker image inspect "$IMAGE" >/dev/null 2>&1; then
  say "DOCKER_TEST_NO_BUILD=1: using the $IMAGE there is"
else
  "${COMPOSE[@]}" down -v >/dev/null 2>&1 || true  # its containers would keep the replaced image
  check_disk
  build
fi
STEPS=" ${DOCKER_TEST_STEPS:-demo cluster shaped} "
[[ "$STEPS" == *" demo "* ]] && demo
[[ "$STEPS" == *" cluster "* ]] && cluster
[[ "$STEPS" == *" shaped "* ]] && { shaped_links; "${COMPOSE[@]}" down -v >/dev/null 2>&1; }
say "ok: image built or reused; steps passed:$STEPS(demo: trained, doctor ok; cluster: horovodrun and mpirun across 2 containers, a killed worker ended the job, a stopped worker named by the watchdog, a restarted worker container relaunched and finished; shaped: the projection checked against tc-shaped links)"
