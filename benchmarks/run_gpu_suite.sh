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
# Wheels in $WHEELS (default .whl, from benchmarks/prepare_gpu_run.sh) are installed into /tmp/radar-site
# first (no index, no dependencies); wheels for another Python than $PYTHON's are left out with a warning (the
# train section then records what it lacks). Limits: SUITE_TIMEOUT (default 470 s; the suite plans its rounds
# for BUDGET_S, default 410 s), TEST_TIMEOUT (default 100 s): with the wheels about 580 s, inside a 600 s
# command. The CUDA tests run without the slow ones (the compiled engine compiles for minutes), the
# sampling engines' ones (tests/test_gpu.py: graphs vs eager, no synchronisation) first, then the FlexAttention
# ones, each result logged as it ends. Exit status: the suite's, else the tests'.
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
py=${PYTHON:-python3}
export PYTHONUNBUFFERED=1
mkdir -p "$out"

tag=$("$py" -c 'import sys; print(f"cp{sys.version_info[0]}{sys.version_info[1]}")')
other=$(compgen -G "$wheels/*.whl" | grep -E -- '-cp[0-9]+-' | grep -v -- "-$tag-" || true)
if [ -n "$other" ]; then
  echo "warning: $wheels holds wheels for another Python than $tag ($py): all left out (prepare them with PY_VERSION)" >&2
elif compgen -G "$wheels/*.whl" >/dev/null; then
  "$py" -m pip install --quiet --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/radar-site \
    "$wheels"/*.whl >"$out/pip.log" 2>&1 || { echo "error: $wheels: the wheels did not install (see $out/pip.log)" >&2; exit 2; }
  export PYTHONPATH=/tmp/radar-site${PYTHONPATH:+:$PYTHONPATH}
fi
command -v nvidia-smi >/dev/null && nvidia-smi >"$out/nvidia-smi.txt" 2>&1

official=()
[ -d .official_var ] && official=(--official_var .official_var)
timeout "${SUITE_TIMEOUT:-470}" "$py" -m radar_train.bench.gpu_suite "${official[@]}" --commit "$commit" \
  --budget_s "${BUDGET_S:-410}" --command "bash benchmarks/run_gpu_suite.sh $commit${*:+ $*}" \
  --output_dir "$out" "$@" 2>&1 | tee "$out/suite.log"
suite=$?
timeout "${TEST_TIMEOUT:-100}" "$py" -m pytest -v -rA -s -p no:cacheprovider -m "gpu and not slow" \
  tests/test_gpu.py tests/accel/test_sca.py 2>&1 | tee "$out/gpu-tests.log"
tests=$?
echo "run_gpu_suite: suite exit $suite, tests exit $tests; files in $out"
[ "$suite" != 0 ] && exit "$suite"
exit "$tests"
