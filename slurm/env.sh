# Sourced by slurm/*.sbatch (not run on its own): finds the project and its executables on a compute node.
#
# Environment (sbatch passes the submitting shell's environment to the job by default):
#   RADAR_DIR    project folder; the job runs there and relative paths are resolved from it
#                (default: the folder sbatch was called from, $SLURM_SUBMIT_DIR)
#   RADAR_SETUP  shell code run before anything else, e.g. "module load cuda/12.4" or
#                "source ~/envs/radar/bin/activate"                                      (default: none)
#   RADAR_BIN    folder holding the radar-cache / radar-train executables
#                (default: $RADAR_DIR/.venv/bin when it exists, else they are looked up on PATH)
# Sets SRUN_CPUS_PER_TASK to the job's --cpus-per-task (SLURM_CPUS_PER_TASK), for the scripts' srun steps.
# shellcheck shell=bash
: "${RADAR_DIR:?slurm/env.sh is sourced by the job scripts, which set RADAR_DIR}"

if [ -n "${RADAR_SETUP:-}" ]; then
  eval "$RADAR_SETUP"
fi
if [ -z "${RADAR_BIN:-}" ] && [ -x "$RADAR_DIR/.venv/bin/radar-train" ]; then
  RADAR_BIN=$RADAR_DIR/.venv/bin
fi
export PYTHONUNBUFFERED=1   # log lines reach the job's output file as they are written
# Since Slurm 22.05 an srun step no longer inherits the job's --cpus-per-task (a cache worker or training rank
# would get one CPU while its data loader runs several workers); srun reads SRUN_CPUS_PER_TASK instead.
if [ -n "${SLURM_CPUS_PER_TASK:-}" ]; then
  export SRUN_CPUS_PER_TASK=$SLURM_CPUS_PER_TASK
fi

# radar_exe NAME: print the path of the executable NAME (radar-cache, radar-train, ...), or fail with one line.
radar_exe() {
  local exe
  if [ -n "${RADAR_BIN:-}" ]; then exe=$RADAR_BIN/$1; else exe=$(command -v "$1" || true); fi
  if [ -z "$exe" ] || [ ! -x "$exe" ]; then
    echo "error: $1 not found (RADAR_BIN=${RADAR_BIN:-unset}, RADAR_DIR=$RADAR_DIR): set RADAR_BIN to the folder" \
         "that holds it, or RADAR_SETUP to the command that activates the environment" >&2
    return 2
  fi
  echo "$exe"
}

# radar_python EXE: the Python that runs the executable EXE (it has the project and PyYAML installed): the python3
# beside it (a venv's or conda env's bin/), else its `#!` interpreter when that is a python (pip writes a
# `#!/bin/sh` trampoline instead for very long paths), else $RADAR_BIN/python3, else python3 on PATH.
radar_python() {
  local dir line="" py
  dir=$(dirname "$1")
  for py in "$dir/python3" "$dir/python"; do [ -x "$py" ] && { echo "$py"; return; }; done
  [ -r "$1" ] && IFS= read -r line <"$1" || true
  py=${line#\#!}
  if [ "$py" != "$line" ] && [[ ${py##*/} == python* ]] && [ -x "$py" ]; then echo "$py"; return; fi
  if [ -n "${RADAR_BIN:-}" ] && [ -x "$RADAR_BIN/python3" ]; then echo "$RADAR_BIN/python3"; return; fi
  command -v python3 || command -v python || { echo "error: no Python found to read the config with" >&2; return 2; }
}

# config_value KEY COMMAND...: the value of the dotted KEY (e.g. output, trainer.default_root_dir) in the YAML of
# `COMMAND --print_config` (the resolved config, overrides included), read with PyYAML (long values wrap onto
# several lines there); empty when null or absent.
config_value() {
  local key=$1 resolved py; shift
  resolved=$("$@" --print_config) || return   # a bad config: the command has said why on stderr
  py=$(radar_python "$1") || return
  "$py" -c '
import sys
try:
    import yaml
except ImportError:
    sys.exit(f"error: {sys.executable} has no PyYAML to read the config with: set RADAR_BIN or RADAR_SETUP")
value = yaml.safe_load(sys.stdin)
for part in sys.argv[1].split("."):
    value = value.get(part) if isinstance(value, dict) else None
if value is not None:
    print(value)
' "$key" <<<"$resolved"
}

# ours NAME: whether a file name is one the run writes: Lightning's requeue save hpc_ckpt_<N>.ckpt, a step file
# step-<N>.ckpt, last.ckpt. A user's hpc_ckpt_backup.ckpt, step-000006-old.ckpt or last-backup.ckpt is not: made
# newest by a copy, it sent the run back to its older step, and the end of the job removed the hpc_ckpt_* ones.
ours() { [[ $1 =~ ^(hpc_ckpt_[0-9]+|step-[0-9]+|last)\.ckpt$ ]]; }

# newest_checkpoint DIR: the most recently written of the run's DIR/hpc_ckpt_<N>.ckpt, DIR/checkpoints/last.ckpt
# and DIR/checkpoints/step-<N>.ckpt (a run killed after a step file, before last.ckpt followed); empty if none.
newest_checkpoint() {
  local found=() f newest=""
  shopt -s nullglob; found=("$1"/hpc_ckpt_*.ckpt "$1"/checkpoints/last.ckpt "$1"/checkpoints/step-*.ckpt); shopt -u nullglob
  for f in ${found[@]+"${found[@]}"}; do   # (bash's -nt: no `find`, which takes a path with a leading - for a test)
    ours "${f##*/}" && [ -f "$f" ] || continue
    if [ -z "$newest" ] || [ "$f" -nt "$newest" ]; then newest=$f; fi
  done
  echo "$newest"
}

# resume_checkpoint RUN_DIR RESUME [ASKED]: the checkpoint a fit in RUN_DIR resumes from (train.sbatch's RESUME:
# auto, none or a file; ASKED, the RESUME a requeued job was submitted with), empty for a fresh start; or one
# `error:` line and status 2. slurm/pipeline.sh checks the same choice before it submits anything.
resume_checkpoint() {
  local run=$1 resume=$2 asked=${3:-$2} ckpt=""
  case "$resume" in
    auto)
      ckpt=$(newest_checkpoint "$run")
      # requeued before its first save: the checkpoint the job was submitted with, not a start from scratch
      if [ -z "$ckpt" ] && [ "$asked" != auto ] && [ "$asked" != none ] && [ -f "$asked" ]; then ckpt=$asked; fi ;;
    none)
      if [ -n "$(newest_checkpoint "$run")" ]; then   # Lightning would even resume from hpc_ckpt_* by itself
        echo "error: RESUME=none but $run holds checkpoints: give another RUN_DIR, or RESUME=auto" >&2; return 2
      fi ;;
    *) ckpt=$resume; [ -f "$ckpt" ] || { echo "error: RESUME=$ckpt: no such checkpoint file" >&2; return 2; } ;;
  esac
  echo "$ckpt"
}

# job_banner WHAT: one line saying which job runs what, where (goes to the job's output file).
job_banner() {
  echo "[$(date '+%F %T')] job ${SLURM_JOB_ID:-?}${SLURM_ARRAY_TASK_ID:+ (array ${SLURM_ARRAY_JOB_ID}_${SLURM_ARRAY_TASK_ID})}" \
       "restart ${SLURM_RESTART_COUNT:-0} on ${SLURM_JOB_NODELIST:-$(hostname)} in $RADAR_DIR: $*"
}
