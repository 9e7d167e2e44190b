# Makefile: the project's commands. `make train` and `make test` run `make setup` first.
VENV ?= .venv
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)
NP ?= 2

.PHONY: setup slurm train test test-unit test-jobs slurm-test lint check-build doctor bench compare-strategies docker-test clean

setup:
	@bash setup/setup.sh

# The README's main command: the MNIST recipe on $(NP) Horovod workers on this machine.
train: setup
	horovodrun -np $(NP) python recipes/pytorch/mnist.py

# The README's test command: lint, then the whole suite (tests/unit and every real job in
# tests/jobs), in two pytest-xdist processes (tests/conftest.py keeps the timing-sensitive tests
# alone); a crashed test process ends the run rather than being replaced (a replaced one left
# the run waiting). Budget: at most 25 minutes from a fresh clone with setup (wheel cached).
test: setup lint slurm
	python -m pytest -v -ra --durations=25 -n 2 --dist loadfile --max-worker-restart 0

# The unit lane: every test that starts no worker process (tests/unit). Budget: 2 minutes.
test-unit: setup
	python -m pytest tests/unit -q -n 2 --max-worker-restart 0

# One feature's real jobs: make test-jobs JOBS=faults (a folder of tests/jobs; all without JOBS).
test-jobs: setup
	python -m pytest tests/jobs/$(JOBS) -v -ra --durations=10 -n 2 --dist loadfile --max-worker-restart 0

# Debian's slurm-wlm and munge (as root, from apt) for tests/jobs/slurm, which start a real
# one-node SLURM cluster of their own; without root the SLURM tests are skipped. Not part of setup.
slurm:
	@bash setup/slurm.sh

# The SLURM lane: recipes/slurm/horovod.sbatch submitted to that cluster, both launch paths,
# requeue and resubmission (about 90 s; also part of make test).
slurm-test: setup slurm
	python -m pytest tests/jobs/slurm -v -ra

lint: setup
	ruff check .

check-build: setup
	horovodrun --check-build

# What this machine's Horovod, MPI and GPUs can do, with a fix for each problem.
doctor: setup
	python -m common.launch.doctor

# Every launch side by side with its ceiling and a torch DDP baseline (about 15 minutes; not
# part of `make test`). Flags: make bench BENCH_ARGS="--np 2 --rounds 3".
bench: setup
	python -m benchmarks.bench $(BENCH_ARGS)

# Data parallelism, hybrid parallelism and parameter servers (sync, async) on the same 4
# processes: throughput, bytes, accuracy (about 10 minutes; not part of `make test`).
# Flags: make compare-strategies STRATEGY_ARGS="--epochs 6 --steps 10".
compare-strategies: setup
	python -m benchmarks.strategies $(STRATEGY_ARGS)

# The CPU image built and trained in, the 2-container cluster under horovodrun and mpirun with
# faults across hosts, and the scaling projection checked against tc-shaped links
# (docker/harness.sh; starts dockerd as root if none runs; about 25 minutes the first time,
# 25 GB of disk; not part of `make test` unless an engine runs; DOCKER_TEST_STEPS=shaped
# DOCKER_TEST_NO_BUILD=1 runs only the shaped links on the image there is).
docker-test:
	bash docker/harness.sh

clean:
	rm -rf runs .pytest_cache .ruff_cache .setup-logs
