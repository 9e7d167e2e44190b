#!/usr/bin/env bash
# gpu_session.sh: what was run on a lent GPU machine (no network, its own python3 with a CUDA
# torch): build Horovod with NCCL through the same setup step, run the doctor and the GPU tests,
# and time the synthetic benchmark against a plain PyTorch loop. Usage:
#   bash tests/helpers/gpu_session.sh <horovod sdist> <output folder>
set -uo pipefail
sdist="$1"; out="$2"
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
# Wheels carried in .whl/ (that machine has no network): cffi, which Horovod's build asks for.
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
fi
nvidia-smi -L; python3 -c 'import torch; print("torch", torch.__version__, torch.version.cuda)'
mpi=0; command -v mpirun >/dev/null && command -v mpicxx >/dev/null && mpi=1
echo "MPI available: $mpi"
export VENV=/tmp/hr-venv HOROVOD_RECIPES_CACHE=/tmp/hr-cache PYTHON=python3 MAKEFLAGS=-j16
SETUP_FLAVOR=gpu SETUP_FRAMEWORKS=system SETUP_MPI=$mpi SETUP_SKIP_APT=1 HOROVOD_SDIST="$sdist" \
  bash setup/setup.sh
rc=$?
tar czf "$out/setup-logs.tgz" .setup-logs
[ $rc = 0 ] || exit $rc
export PATH="$VENV/bin:$PATH" PYTHONPATH="$PWD:${PYTHONPATH:-}" PYTHONUNBUFFERED=1
python -m common.launch.doctor | tee "$out/doctor.txt"
python -m pytest -v -ra -p no:cacheprovider tests/jobs/gpu/test_nccl.py tests/jobs/recipes/test_pytorch.py::test_amp_on_gpu_trains \
  >"$out/pytest.txt" 2>&1
tail -n 5 "$out/pytest.txt"
for amp in "" --amp; do
  for bs in 64 128; do
    python -m benchmarks.torch_baseline --model resnet50 --batch-size $bs $amp --num-iters 10 --num-warmup-batches 20 \
      --metrics-file "$out/bench.jsonl" | tail -n 1
    horovodrun -np 1 -H localhost:1 --gloo python recipes/pytorch/synthetic_benchmark.py --batch-size $bs $amp --num-iters 10 --num-warmup-batches 20 \
      --metrics-file "$out/recipe-bench.jsonl" | tail -n 1
  done
done
