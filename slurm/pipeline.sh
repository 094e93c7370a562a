#!/usr/bin/env bash
# Submit the whole pipeline: the radar-cache job array, a verify job once every array task has succeeded,
# then radar-train once the cache verifies (--dependency=afterok, --kill-on-invalid-dep=yes: if a step
# fails, the jobs after it are cancelled instead of waiting forever). Prints the job ids and where the
# outputs will be. Run it from anywhere; the jobs run in the project folder.
#
#   slurm/pipeline.sh [--dry-run]        (--dry-run prints the commands instead of running them: `mkdir -p`
#                                         of the log folder and the sbatch lines, with absolute paths and
#                                         RADAR_DIR set, so that they work as printed from any folder; the
#                                         job ids they depend on are placeholders: <cache>, <verify>)
#
# Environment variables (defaults in brackets):
#   CACHE_CONFIG    radar-cache config                                         [configs/cache/tiny.yaml]
#   CACHE_DIR       cache folder to write, and to train on (it replaces the path of the training config's
#                   last data.caches entry)                          [the cache config's `output`]
#   NUM_WORKERS     cache array size: workers, one GPU each                                        [4]
#   MAX_PARALLEL    array tasks running at once (sbatch --array=...%MAX_PARALLEL); empty = no limit  []
#   GPUS_PER_TASK   GPUs per cache worker; 0 = run on CPUs                                           [1]
#   CACHE_CPUS      CPUs per cache worker                                                            [8]
#   CACHE_TIME      time limit of each cache task                                           [04:00:00]
#   CACHE_ARGS      extra arguments for `radar-cache run` (split at spaces, tabs and newlines; the cache
#                   folder and the workers are CACHE_DIR's and NUM_WORKERS', not --output / --num_workers),
#                   e.g. "--plan.images_per_class null --plan.num_samples 65536" (the configs set
#                   plan.images_per_class, and a plan takes exactly one of the two)                      []
#   TRAIN_CONFIG    radar-train config                                         [configs/train/tiny.yaml]
#   RUN_DIR         run folder (checkpoints, logs, final/ adapter)   [the training config's default_root_dir]
#   NODES           training nodes                                                                   [1]
#   GPUS_PER_NODE   GPUs per training node; 0 = train on CPUs                                        [1]
#   RANKS_PER_NODE  training processes per node (one per GPU; DDP over gloo on CPUs)  [GPUS_PER_NODE, or 1]
#   TRAIN_CPUS      CPUs per training rank                                                           [8]
#   TRAIN_TIME      time limit of each training job; it requeues itself and resumes past it   [24:00:00]
#   TRAIN_ARGS      extra arguments for `radar-train fit` (split as CACHE_ARGS; the run folder is RUN_DIR's,
#                   not --trainer.default_root_dir), e.g. "--trainer.max_steps 20000"                   []
#   PARTITION       partition for all jobs                                        [empty: cluster default]
#   ACCOUNT         account for all jobs                                          [empty: cluster default]
#   SBATCH_ARGS     extra sbatch options for all jobs (split as CACHE_ARGS; given first, so that the settings above
#                   and the options the pipeline needs win over them: --chdir, --export, --dependency, --array,
#                   --output), e.g. "--qos=high --constraint=a100 --mail-type=FAIL"                     []
#   LOG_DIR         folder for the jobs' output files                                      [logs/slurm]
#   CHECK           1: check the jobs' settings here before anything is submitted: `radar-cache run --check`
#                   (the config with CACHE_ARGS, the workers, --output; no model is loaded, nothing is written)
#                   and the training config with TRAIN_ARGS and the run folder (`radar-train fit --check`: unknown
#                   options, wrong types or values, a RUN_DIR holding files of no run; with the checkpoint the job
#                   will resume from, chosen by RESUME as train.sbatch does), so that a mistake is refused now, not
#                   after a wait in the queue;
#                   0: skip it (when this machine cannot run radar-cache / radar-train; set CACHE_DIR and
#                   RUN_DIR then: without them the folders are read from the configs with those commands)   [1]
#   RADAR_SETUP, RADAR_BIN: how the jobs find the executables, see slurm/env.sh (RADAR_DIR is set here).
# Relative paths are relative to the project folder.
set -euo pipefail   # arrays expand as ${a[@]+"${a[@]}"}: under set -u, bash < 4.4 calls an empty one unbound
unset CDPATH        # (a cd that finds its folder through CDPATH prints it: RADAR_DIR would read two lines)
RADAR_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
export RADAR_DIR
cd "$RADAR_DIR"

DRY_RUN=0
if (( $# > 1 )); then   # (settings are environment variables: a NUM_WORKERS=8 after the option would be dropped)
  echo "usage: slurm/pipeline.sh [--dry-run]   (settings are environment variables, see the header: NUM_WORKERS=8 slurm/pipeline.sh)" >&2; exit 2
fi
case "${1:-}" in
  --dry-run) DRY_RUN=1 ;;
  "") ;;
  *) echo "usage: slurm/pipeline.sh [--dry-run]   (settings are environment variables, see the header)" >&2; exit 2 ;;
esac

CACHE_CONFIG=${CACHE_CONFIG:-configs/cache/tiny.yaml}
CACHE_DIR=${CACHE_DIR:-}
NUM_WORKERS=${NUM_WORKERS:-4}
MAX_PARALLEL=${MAX_PARALLEL:-}
GPUS_PER_TASK=${GPUS_PER_TASK:-1}
CACHE_CPUS=${CACHE_CPUS:-8}
CACHE_TIME=${CACHE_TIME:-04:00:00}
CACHE_ARGS=${CACHE_ARGS:-}
TRAIN_CONFIG=${TRAIN_CONFIG:-configs/train/tiny.yaml}
RUN_DIR=${RUN_DIR:-}
NODES=${NODES:-1}
GPUS_PER_NODE=${GPUS_PER_NODE:-1}
RANKS_PER_NODE=${RANKS_PER_NODE:-}   # (default below, once GPUS_PER_NODE is known to be a number)
TRAIN_CPUS=${TRAIN_CPUS:-8}
TRAIN_TIME=${TRAIN_TIME:-24:00:00}
TRAIN_ARGS=${TRAIN_ARGS:-}
LOG_DIR=${LOG_DIR:-logs/slurm}
CHECK=${CHECK:-1}
abs() { case "$1" in /*) echo "$1" ;; *) echo "$RADAR_DIR/$1" ;; esac; }
LOG_DIR=$(abs "$LOG_DIR")   # the sbatch commands name absolute paths: they work from any folder

problems=()
if [ -e "$LOG_DIR" ] && [ ! -d "$LOG_DIR" ]; then problems+=("LOG_DIR $LOG_DIR is an existing file: give a folder"); fi
for f in "$CACHE_CONFIG" "$TRAIN_CONFIG"; do [ -f "$f" ] || problems+=("config $f not found"); done
# whole numbers as bash arithmetic reads them: digits without a leading zero (08 is octal there, an error or,
# in a test, a GPU count of none); the counts of workers, nodes, ranks and CPUs at least 1, of GPUs 0 for none
if [[ -z $RANKS_PER_NODE ]]; then
  if [[ $GPUS_PER_NODE =~ ^[1-9][0-9]*$ ]]; then RANKS_PER_NODE=$GPUS_PER_NODE; else RANKS_PER_NODE=1; fi
fi
for v in NUM_WORKERS CACHE_CPUS NODES RANKS_PER_NODE TRAIN_CPUS GPUS_PER_TASK GPUS_PER_NODE; do
  if ! [[ ${!v} =~ ^(0|[1-9][0-9]*)$ ]]; then
    problems+=("$v=${!v} is not a whole number (digits, without a leading zero)")
  elif [[ ${!v} == 0 && $v != GPUS_* ]]; then
    problems+=("$v=0: it must be at least 1")
  fi
done
if [[ $GPUS_PER_NODE =~ ^[1-9][0-9]*$ && $RANKS_PER_NODE != "$GPUS_PER_NODE" ]]; then
  problems+=("RANKS_PER_NODE=$RANKS_PER_NODE but GPUS_PER_NODE=$GPUS_PER_NODE: Lightning runs one rank per GPU")
fi
[[ -z $MAX_PARALLEL || $MAX_PARALLEL =~ ^[1-9][0-9]*$ ]] || problems+=("MAX_PARALLEL=$MAX_PARALLEL is not a positive number")
[[ $CHECK == 0 || $CHECK == 1 ]] || problems+=("CHECK=$CHECK must be 0 or 1")
if (( DRY_RUN == 0 )); then command -v sbatch >/dev/null || problems+=("sbatch not found: run this on a SLURM login node"); fi
if (( ${#problems[@]} )); then printf 'error: %s\n' ${problems[@]+"${problems[@]}"} >&2; exit 2; fi

# split at spaces, tabs and newlines (`read -a` alone stops at the first newline: the lines after it were dropped)
read -r -d '' -a extra <<<"${SBATCH_ARGS:-}" || true
read -r -d '' -a cache_args <<<"$CACHE_ARGS" || true
read -r -d '' -a train_args <<<"$TRAIN_ARGS" || true
# the folders and the split are the pipeline's own settings: given in the arguments too, the job would write or train
# in another folder than the one verified, trained on, resumed from and printed
given() {   # given SETTING 'OPTION-PATTERN' WORD...: a problem for each word that is the option (or OPTION=VALUE)
  local setting=$1 pattern=$2 w; shift 2
  for w in "$@"; do
    if [[ $w =~ ^($pattern)(=.*)?$ ]]; then problems+=("${w%%=*} in ${setting%%:*}: ${setting#*: }"); fi
  done
}
given "CACHE_ARGS: set the cache folder with CACHE_DIR" '--output' ${cache_args[@]+"${cache_args[@]}"}
given "CACHE_ARGS: set the workers with NUM_WORKERS (the array has one task each)" '--num[-_]workers|--worker[-_]index' \
  ${cache_args[@]+"${cache_args[@]}"}
given "TRAIN_ARGS: set the run folder with RUN_DIR" '--trainer\.default_root_dir' ${train_args[@]+"${train_args[@]}"}
if (( ${#problems[@]} )); then printf 'error: %s\n' ${problems[@]+"${problems[@]}"} >&2; exit 2; fi
unset_hint() {   # after radar_exe's error line: what spares the pipeline the commands on this machine
  echo "  (the pipeline reads the unset CACHE_DIR / RUN_DIR from the configs with the commands: set both to submit" \
       "from a machine without them, with CHECK=0)" >&2
}
if [ -z "$CACHE_DIR" ] || [ -z "$RUN_DIR" ]; then   # the configs' own folders (runs the CLIs' --print_config)
  # shellcheck source=slurm/env.sh
  source slurm/env.sh
  if [ -z "$CACHE_DIR" ]; then
    cache_exe=$(radar_exe radar-cache) || { unset_hint; exit 2; }   # (its own error line; not a command named "")
    CACHE_DIR=$(config_value output "$cache_exe" run --config="$CACHE_CONFIG" ${cache_args[@]+"${cache_args[@]}"})
  fi
  if [ -z "$RUN_DIR" ]; then
    train_exe=$(radar_exe radar-train) || { unset_hint; exit 2; }
    RUN_DIR=$(config_value trainer.default_root_dir "$train_exe" fit --config="$TRAIN_CONFIG" ${train_args[@]+"${train_args[@]}"})
  fi
  [ -n "$CACHE_DIR" ] || problems+=("no cache folder: set CACHE_DIR or \`output:\` in $CACHE_CONFIG")
  [ -n "$RUN_DIR" ] || problems+=("no run folder: set RUN_DIR or trainer.default_root_dir in $TRAIN_CONFIG")
  if (( ${#problems[@]} )); then printf 'error: %s\n' ${problems[@]+"${problems[@]}"} >&2; exit 2; fi
fi

# the run folder, before the cache job runs for it (radar-train would refuse it only in the training job)
if [ -e "$(abs "$RUN_DIR")" ] && [ ! -d "$(abs "$RUN_DIR")" ]; then
  echo "error: RUN_DIR $RUN_DIR is an existing file: give a folder" >&2; exit 2
fi

# (folders and files are given as --option=VALUE, here and in the jobs: a value that begins with "-" is a value)
if (( CHECK )); then   # the jobs' own checks, here (one `error:` line from the command, and exit 2)
  # shellcheck source=slurm/env.sh
  source slurm/env.sh
  cache_exe=$(radar_exe radar-cache) || exit 2
  "$cache_exe" run --config="$CACHE_CONFIG" --output="$CACHE_DIR" --num-workers "$NUM_WORKERS" --worker-index 0 \
    ${cache_args[@]+"${cache_args[@]}"} --check >/dev/null || exit 2
  train_exe=$(radar_exe radar-train) || exit 2
  # its options and its run folder (a folder holding a user's files is refused now, not after the cache array),
  # with the checkpoint the job will resume from, chosen as train.sbatch chooses it (RESUME; its checks that need the
  # cache and the models, not made or read yet, are the job's)
  ckpt=$(resume_checkpoint "$(abs "$RUN_DIR")" "${RESUME:-auto}") || exit 2
  "$train_exe" fit --config="$TRAIN_CONFIG" ${train_args[@]+"${train_args[@]}"} --trainer.default_root_dir="$RUN_DIR" \
    --data.caches.path="$CACHE_DIR" ${ckpt:+--ckpt_path="$ckpt"} --check >/dev/null || exit 2   # (the job's overrides too)
fi

# SBATCH_ARGS first: sbatch keeps the last value of an option given twice, so the settings above win over them
common=(${extra[@]+"${extra[@]}"} --chdir="$RADAR_DIR" --export=ALL)
[ -n "${PARTITION:-}" ] && common+=(--partition="$PARTITION")
[ -n "${ACCOUNT:-}" ] && common+=(--account="$ACCOUNT")
# sbatch reads --output as a pattern (%j, %x, ...): a "%" in the log folder's path is written %%
log_pattern=${LOG_DIR//%/%%}
gres() { if (( $1 > 0 )); then echo "--gres=gpu:$1"; else echo "--gres=none"; fi; }

# submit NAME SBATCH-ARGS...: sbatch, print the job id (or a made-up one with --dry-run, after printing the
# command, with the RADAR_DIR that this script exports to the jobs)
submit() {
  local name=$1; shift
  if (( DRY_RUN )); then
    printf 'RADAR_DIR=%q ' "$RADAR_DIR" >&2; printf '%q ' sbatch "$@" >&2; echo >&2
    echo "<$name>"
  else
    sbatch --parsable "$@" | cut -d';' -f1
  fi
}
if (( DRY_RUN )); then printf 'mkdir -p %q\n' "$LOG_DIR" >&2; else mkdir -p "$LOG_DIR"; fi
submitted=()
cancel_submitted() {
  if (( ${#submitted[@]} )) && (( ! DRY_RUN )); then
    echo "error: a submission failed; cancelling the jobs already submitted: ${submitted[*]-}" >&2
    scancel ${submitted[@]+"${submitted[@]}"} || true
  fi
}
trap 'cancel_submitted' ERR
array=0-$((NUM_WORKERS - 1))${MAX_PARALLEL:+%$MAX_PARALLEL}

cache_id=$(submit cache ${common[@]+"${common[@]}"} --array="$array" --cpus-per-task="$CACHE_CPUS" "$(gres "$GPUS_PER_TASK")" \
  --time="$CACHE_TIME" --output="$log_pattern/%x-%A_%a.out" --export=ALL,NUM_WORKERS="$NUM_WORKERS" \
  "$RADAR_DIR/slurm/cache.sbatch" "$CACHE_CONFIG" "$CACHE_DIR" ${cache_args[@]+"${cache_args[@]}"})
submitted+=("$cache_id")
verify_id=$(submit verify ${common[@]+"${common[@]}"} --dependency="afterok:$cache_id" --kill-on-invalid-dep=yes \
  --output="$log_pattern/%x-%j.out" "$RADAR_DIR/slurm/verify.sbatch" "$CACHE_DIR")
submitted+=("$verify_id")
train_id=$(submit train ${common[@]+"${common[@]}"} --dependency="afterok:$verify_id" --kill-on-invalid-dep=yes \
  --nodes="$NODES" --ntasks-per-node="$RANKS_PER_NODE" "$(gres "$GPUS_PER_NODE")" --cpus-per-task="$TRAIN_CPUS" \
  --time="$TRAIN_TIME" --output="$log_pattern/%x-%j.out" \
  "$RADAR_DIR/slurm/train.sbatch" "$TRAIN_CONFIG" "$RUN_DIR" ${train_args[@]+"${train_args[@]}"} \
  --data.caches.path="$CACHE_DIR")   # (an argument: --export=...,CACHE_DIR=a,b is split at the comma by sbatch)
trap - ERR

cat <<EOF
cache   job $cache_id: array $array, $NUM_WORKERS workers -> $(abs "$CACHE_DIR")
verify  job $verify_id: after the cache array succeeds (radar-cache verify $CACHE_DIR)
train   job $train_id: after verify succeeds, $NODES node(s) x $RANKS_PER_NODE rank(s) -> $(abs "$RUN_DIR")
        adapter: $(abs "$RUN_DIR")/final/  (adapter_config.json, adapter_model.safetensors)
logs:   $(abs "$LOG_DIR")/radar-{cache,verify,train}-<job id>*.out
watch:  squeue -j $cache_id,$verify_id,$train_id    sacct -X -j $cache_id,$verify_id,$train_id
jobs: cache=$cache_id verify=$verify_id train=$train_id
EOF
