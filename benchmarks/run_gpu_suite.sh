#!/usr/bin/env bash
# The GPU run in one command, on the GPU machine, in the repository root: the GPU suite
# (python -m radar_train.bench.gpu_suite) and then the CUDA tests, each under a time limit.
#
#   bash benchmarks/run_gpu_suite.sh COMMIT [more gpu_suite options]
#
# COMMIT: the commit the checkout holds (recorded in the result file; the copy on a lent machine has no .git).
# Writes into $OUT (default benchmarks/gpu): <date>-<device>.json (rewritten after each preset and section,
# so a killed run keeps what it measured), suite.log, gpu-tests.log, nvidia-smi.txt. An existing result file
# of the same name is refused by the suite (pass --overwrite to replace it).
# The official code is in $OFFICIAL_VAR (default .official_var). Wheels in $WHEELS (default .whl, from
# benchmarks/prepare_gpu_run.sh) for $PYTHON's version are installed into /tmp/radar-site first (no index, no
# dependencies; others are left out). It stops at once (exit 2, nothing written) without the official code or
# without a wheel for that Python, unless NO_OFFICIAL=1 / NO_WHEELS=1; a failed install only warns (the train
# section then records what it lacks). Limits: SUITE_TIMEOUT (default 440 s; the suite plans its rounds
# for BUDGET_S, default 380 s), TEST_TIMEOUT (default 100 s), then the probes named in PROBES (default
# "bicubic fused decode"; "" for none: python benchmarks/gpu_probes.py NAME, logs and JSON into $OUT) under PROBE_TIMEOUT
# (default 60 s each). The 2026-12-04 run took 342 s (the suite 294 s); the limits add up to 720 s, so a suite that
# runs to its limit leaves the probes to the device command's own 600 s limit.
# The CUDA tests run without the slow ones (the compiled engine's Triton compiles; the suite's accel section
# checks that engine against eager), the sampling engines' ones (tests/test_gpu.py: graphs vs eager, no
# synchronisation) first, then the FlexAttention ones, then the fused block's and FastVAR's, then the profile's
# kernel count, the noise's one-kernel hash, the decoder's attention block and the bicubic upsampling by a matrix
# product, each result logged as it ends.
# Exit status: the suite's, else the tests'.
set -uo pipefail
cd "$(dirname "$0")/.."
if [ $# -lt 1 ] || [[ "$1" == -* ]]; then
  echo "usage: bash benchmarks/run_gpu_suite.sh COMMIT [gpu_suite options]" >&2
  exit 2
fi
commit=$1
shift
out=${OUT:-benchmarks/gpu}
wheels=${WHEELS:-.whl}
official_dir=${OFFICIAL_VAR:-.official_var}
py=${PYTHON:-python3}
export PYTHONUNBUFFERED=1

# What the run needs is checked in its first second (a missing carry would cost the whole device budget for a run
# without its main numbers): the official code (NO_OFFICIAL=1: time ours only) and wheels for this Python
# (NO_WHEELS=1: the train section then records what it lacks).
tag=$("$py" -c 'import sys; print(f"cp{sys.version_info[0]}{sys.version_info[1]}")')
if [ "${NO_OFFICIAL:-0}" != 1 ] && [ ! -f "$official_dir/models/var.py" ]; then
  echo "error: $official_dir/models/var.py not found: carry .official_var (bash benchmarks/prepare_gpu_run.sh), or NO_OFFICIAL=1" >&2
  exit 2
fi
mapfile -t matching < <(compgen -G "$wheels/*.whl" | grep -E -- "-($tag-|py3-none-)" || true)
if [ "${NO_WHEELS:-0}" != 1 ] && [ ${#matching[@]} = 0 ]; then
  version=$("$py" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
  echo "error: $wheels holds no wheel for $tag ($py): carry .whl prepared with PY_VERSION=$version, or NO_WHEELS=1" >&2
  exit 2
fi
mkdir -p "$out"
if [ ${#matching[@]} != 0 ]; then   # only this Python's (another's are left out); a failed install is no reason to stop
  if "$py" -m pip install --quiet --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/radar-site \
      ${matching[@]+"${matching[@]}"} >"$out/pip.log" 2>&1; then
    export PYTHONPATH=/tmp/radar-site${PYTHONPATH:+:$PYTHONPATH}
  else
    echo "warning: $wheels: the wheels did not install (see $out/pip.log); the train section will say what it lacks" >&2
  fi
fi
command -v nvidia-smi >/dev/null && nvidia-smi >"$out/nvidia-smi.txt" 2>&1

official=()
[ "${NO_OFFICIAL:-0}" != 1 ] && official=(--official_var "$official_dir")
timeout "${SUITE_TIMEOUT:-440}" "$py" -m radar_train.bench.gpu_suite ${official[@]+"${official[@]}"} --commit "$commit" \
  --budget_s "${BUDGET_S:-380}" --command "bash benchmarks/run_gpu_suite.sh $commit${*:+ $*}" \
  --output_dir "$out" "$@" 2>&1 | tee "$out/suite.log"
suite=$?
# (in one process: -o addopts= drops pyproject.toml's --dist loadgroup, whose pytest-xdist the GPU image may lack, and the CUDA
# tests share one GPU)
timeout "${TEST_TIMEOUT:-100}" "$py" -m pytest -v -rA -s -p no:cacheprovider -o addopts= -o log_level=WARNING -m "gpu and not slow" \
  tests/test_gpu.py tests/accel/test_sca.py tests/models/test_fused.py tests/accel/test_fastvar.py \
  tests/bench/test_scales.py tests/test_noise.py tests/models/test_vae_blocks.py tests/test_interp.py 2>&1 | tee "$out/gpu-tests.log"
tests=$?
for probe in ${PROBES-bicubic fused decode}; do  # (a probe's failure is in its log; it does not change the exit status)
  OUT="$out" PYTHONPATH=".${PYTHONPATH:+:$PYTHONPATH}" timeout "${PROBE_TIMEOUT:-60}" "$py" benchmarks/gpu_probes.py "$probe" \
    2>&1 | tee "$out/probe-$probe.log"
done
echo "run_gpu_suite: suite exit $suite, tests exit $tests; files in $out"
[ "$suite" != 0 ] && exit "$suite"
exit "$tests"
