#!/usr/bin/env bash
# The GPU run in one command, on the GPU machine, in the repository root: the GPU suite
# (python -m radar_train.bench.gpu_suite), the CUDA tests and the probes (benchmarks/gpu_probes.py), each under a
# time limit.
#
#   [PART=all|main|diagnostics] bash benchmarks/run_gpu_suite.sh COMMIT [more gpu_suite options]
#
# COMMIT: the commit the checkout holds (recorded in the result file; the copy on a lent machine has no .git).
# PART picks what runs (gpu_suite options given after COMMIT still override its --sections):
#   all (default)  the suite's sections accel, train, profile and sca, then the CUDA tests, then the probes;
#                  limits add up to 720 s;
#   main           what the targets need: sections accel and train, then the CUDA tests (no probes); about 6
#                  min, at most 440 s;
#   diagnostics    what explains the figures: sections profile and sca, then the probes (no tests); about 4.5 min,
#                  at most 420 s.
# main then diagnostics, as two device commands, fit a 15-minute device budget with the machine's start, where
# all in one command would take most of it and leave no rerun (benchmarks/README.md, "The GPU run").
# Writes into $OUT (default benchmarks/gpu), seven files at most (a lent machine returns eight): <date>-<device>.json
# (rewritten after each preset and section, so a killed run keeps what it measured), suite.log, gpu-tests.log,
# nvidia-smi.txt, pip.log (when wheels were installed), probes.log and probes.json (every probe's rows, the file
# rewritten after each probe). An existing result file of the same name is refused by the suite (pass --overwrite to
# replace it).
# The official code is in $OFFICIAL_VAR (default .official_var). Wheels in $WHEELS (default .whl, from
# benchmarks/prepare_gpu_run.sh) for $PYTHON's version are installed into /tmp/radar-site first (no index, no
# dependencies; others are left out). It stops at once (exit 2, nothing written) without the official code or
# without a wheel for that Python, unless NO_OFFICIAL=1 / NO_WHEELS=1; a failed install only warns (the train
# section then records what it lacks). Limits: SUITE_TIMEOUT (all 440 s, main 340, diagnostics 240; the suite plans
# its rounds for BUDGET_S: 380, 300, 200), TEST_TIMEOUT (100 s), then the probes named in PROBES (all and
# diagnostics: "bicubic fused decode"; "" for none: python benchmarks/gpu_probes.py NAME) under PROBE_TIMEOUT
# (default 60 s each). The 2026-12-04 run (sections accel, train and sca; no probes) took 342 s (the suite 294 s).
# The CUDA tests run without the slow ones (the compiled engine's Triton compiles; the suite's accel section
# checks that engine against eager), the sampling engines' ones (tests/test_gpu.py: graphs vs eager, no
# synchronisation) first, then the FlexAttention ones, then the fused block's and FastVAR's, then the profile's
# kernel count, the noise's one-kernel hash, the decoder's attention block and the bicubic upsampling by a matrix
# product, each result logged as it ends.
# Exit status: the suite's, else the tests'.
set -uo pipefail
cd "$(dirname "$0")/.."
if [ $# -lt 1 ] || [[ "$1" == -* ]]; then
  echo "usage: [PART=all|main|diagnostics] bash benchmarks/run_gpu_suite.sh COMMIT [gpu_suite options]" >&2
  exit 2
fi
part=${PART:-all}
case $part in  # sections, suite limit, suite budget, tests (1: run them), default probes
  all) sections=accel,train,profile,sca; suite_limit=440; budget=380; run_tests=1; probes="bicubic fused decode" ;;
  main) sections=accel,train; suite_limit=340; budget=300; run_tests=1; probes="" ;;
  diagnostics) sections=profile,sca; suite_limit=240; budget=200; run_tests=0; probes="bicubic fused decode" ;;
  *) echo "error: PART=$part: one of all, main, diagnostics" >&2; exit 2 ;;
esac
probes=${PROBES-$probes}
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
prefix=""
[ "$part" != all ] && prefix="PART=$part "
timeout "${SUITE_TIMEOUT:-$suite_limit}" "$py" -m radar_train.bench.gpu_suite ${official[@]+"${official[@]}"} \
  --commit "$commit" --sections "$sections" --budget_s "${BUDGET_S:-$budget}" \
  --command "${prefix}bash benchmarks/run_gpu_suite.sh $commit${*:+ $*}" --output_dir "$out" "$@" 2>&1 | tee "$out/suite.log"
suite=$?
tests=0
if [ "$run_tests" = 1 ]; then
  # (in one process: -o addopts= drops pyproject.toml's --dist loadgroup, whose pytest-xdist the GPU image may lack, and the CUDA
  # tests share one GPU)
  timeout "${TEST_TIMEOUT:-100}" "$py" -m pytest -v -rA -s -p no:cacheprovider -o addopts= -o log_level=WARNING -m "gpu and not slow" \
    tests/test_gpu.py tests/accel/test_sca.py tests/models/test_fused.py tests/accel/test_fastvar.py \
    tests/bench/test_scales.py tests/test_noise.py tests/models/test_vae_blocks.py tests/test_interp.py 2>&1 | tee "$out/gpu-tests.log"
  tests=$?
fi
# the probes share probes.log and probes.json (PROBES_RUN: this run's; a probes.json of another run is started anew)
[ -n "$probes" ] && : >"$out/probes.log"
run_id="$(date -u +%Y%m%dT%H%M%SZ)-$$"
for probe in $probes; do  # (a probe's failure is in the log; it does not change the exit status)
  OUT="$out" PROBES_RUN="$run_id" PYTHONPATH=".${PYTHONPATH:+:$PYTHONPATH}" timeout "${PROBE_TIMEOUT:-60}" "$py" benchmarks/gpu_probes.py "$probe" \
    2>&1 | tee -a "$out/probes.log"
done
echo "run_gpu_suite: suite exit $suite, tests exit $tests; files in $out"
[ "$suite" != 0 ] && exit "$suite"
exit "$tests"
