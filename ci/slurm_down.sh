#!/usr/bin/env bash
# Stop the daemons that ci/slurm_up.sh started for this SLURM_DIR (slurmd, slurmctld, slurmdbd, MariaDB, and
# munged if slurm_up.sh started it), by the process ids in their pid files.
#
#   SLURM_DIR=/tmp/slurm-ci bash ci/slurm_down.sh           # stop; keep config, state and logs
#   SLURM_DIR=/tmp/slurm-ci CLEAN=1 bash ci/slurm_down.sh   # stop and delete SLURM_DIR
#
# Idempotent: stopping a cluster that is not running does nothing. Always exits 0 so that it can run
# from a `trap ... EXIT`.
set -uo pipefail
SLURM_DIR=${SLURM_DIR:-/tmp/slurm-ci}
CLEAN=${CLEAN:-0}

stop() {  # stop NAME: TERM the process in $SLURM_DIR/NAME.pid and wait (up to 30 s) until it has exited
  local p
  p=$(cat "$SLURM_DIR/$1.pid" 2>/dev/null) || return 0
  [ -n "$p" ] && kill -0 "$p" 2>/dev/null || return 0
  kill "$p" 2>/dev/null
  for _ in $(seq 1 60); do kill -0 "$p" 2>/dev/null || { echo "slurm_down: stopped $1 ($p)"; return 0; }; sleep 0.5; done
  echo "slurm_down: $1 ($p) still running after 30 s, sending KILL"; kill -9 "$p" 2>/dev/null
}

# slurmd first (it kills the job steps it started), then the controller (it saves its state before
# exiting, so the ports are free again once it is gone), then accounting, then authentication.
for name in slurmd slurmctld slurmdbd mysql munged; do stop "$name"; done
rm -f "$SLURM_DIR/munged.pid"
if [ "$CLEAN" = 1 ] && [ -d "$SLURM_DIR" ]; then rm -rf "$SLURM_DIR" && echo "slurm_down: removed $SLURM_DIR"; fi
exit 0
