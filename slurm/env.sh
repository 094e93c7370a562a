# Sourced by slurm/*.sbatch (not run on its own): finds the project and its executables on a compute node.
#
# Environment (sbatch passes the submitting shell's environment to the job by default):
#   RADAR_DIR    project folder; the job runs there and relative paths are resolved from it
#                (default: the folder sbatch was called from, $SLURM_SUBMIT_DIR)
#   RADAR_SETUP  shell code run before anything else, e.g. "module load cuda/12.4" or
#                "source ~/envs/radar/bin/activate"                                      (default: none)
#   RADAR_BIN    folder holding the radar-cache / radar-train executables
#                (default: $RADAR_DIR/.venv/bin when it exists, else they are looked up on PATH)
# shellcheck shell=bash
: "${RADAR_DIR:?slurm/env.sh is sourced by the job scripts, which set RADAR_DIR}"

if [ -n "${RADAR_SETUP:-}" ]; then
  eval "$RADAR_SETUP"
fi
if [ -z "${RADAR_BIN:-}" ] && [ -x "$RADAR_DIR/.venv/bin/radar-train" ]; then
  RADAR_BIN=$RADAR_DIR/.venv/bin
fi
export PYTHONUNBUFFERED=1   # log lines reach the job's output file as they are written

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

# config_value PATTERN COMMAND...: the value on the first line of `COMMAND --print_config` (the resolved config,
# overrides included) that matches the awk PATTERN, e.g. '^output:'; empty when null or absent.
config_value() {
  local pattern=$1 resolved; shift
  resolved=$("$@" --print_config) || return   # a bad config: the command has said why on stderr
  awk -v p="$pattern" -v q="'" \
    '$0 ~ p { sub(/^[^:]*:[ ]*/, ""); gsub("^[\"" q "]|[\"" q "]$", ""); if ($0 != "null") print; exit }' <<<"$resolved"
}

# job_banner WHAT: one line saying which job runs what, where (goes to the job's output file).
job_banner() {
  echo "[$(date '+%F %T')] job ${SLURM_JOB_ID:-?}${SLURM_ARRAY_TASK_ID:+ (array ${SLURM_ARRAY_JOB_ID}_${SLURM_ARRAY_TASK_ID})}" \
       "restart ${SLURM_RESTART_COUNT:-0} on ${SLURM_JOB_NODELIST:-$(hostname)} in $RADAR_DIR: $*"
}
