#!/usr/bin/env bash
# Start a one-node SLURM cluster on localhost (Debian's slurm + munge packages), for CI and local tests.
#
#   sudo SLURM_DIR=/tmp/slurm-ci WITH_DBD=1 bash ci/slurm_up.sh
#   export SLURM_CONF=/tmp/slurm-ci/slurm.conf       # then sbatch / squeue / sacct talk to it
#   sudo SLURM_DIR=/tmp/slurm-ci bash ci/slurm_down.sh   # stop the daemons again
#
# Knobs (environment variables):
#   SLURM_DIR   folder for the config, state, spool, logs and the accounting database   (default /tmp/slurm-ci)
#   WITH_DBD    1: also MariaDB + slurmdbd, so that `sacct` works; 0: no accounting      (default 1)
#   PARTITION   name of the one partition                                                (default debug)
#
# Needs root (the daemons run as root, packages come from apt when missing). Idempotent: when the
# cluster of this SLURM_DIR already answers, it only prints `sinfo`; daemons that are already running
# are not started twice. Exit status: 0 = cluster up, 3 = impossible here (not root / no apt and no
# packages; the reason is printed on one line starting with "slurm_up: cannot"), other = failure
# (see $SLURM_DIR/log/).
set -euo pipefail
SLURM_DIR=${SLURM_DIR:-/tmp/slurm-ci}
WITH_DBD=${WITH_DBD:-1}
PARTITION=${PARTITION:-debug}
export SLURM_CONF=$SLURM_DIR/slurm.conf

say() { echo "slurm_up: $*"; }
cannot() { echo "slurm_up: cannot start a local SLURM: $*" >&2; exit 3; }
alive() { local p; p=$(cat "$SLURM_DIR/$1.pid" 2>/dev/null) && [ -n "$p" ] && kill -0 "$p" 2>/dev/null; }
wait_for() {  # wait_for SECONDS DESCRIPTION COMMAND...: poll every 0.5 s
  local secs=$1 what=$2; shift 2
  for _ in $(seq 1 $((secs * 2))); do "$@" >/dev/null 2>&1 && return 0; sleep 0.5; done
  echo "slurm_up: timed out after ${secs}s waiting for $what (logs: $SLURM_DIR/log/)" >&2; return 1
}
node_ready() { sinfo -h -o %T 2>/dev/null | grep -Eq '^(idle|mixed|allocated)'; }

if [ -f "$SLURM_CONF" ] && alive slurmctld && alive slurmd && node_ready; then
  say "already running ($SLURM_CONF)"; sinfo; exit 0
fi
[ "$(id -u)" = 0 ] || cannot "needs root (the daemons run as root; packages come from apt)"

# ---- packages --------------------------------------------------------------------------------
pkgs="slurmctld slurmd slurm-client munge"
[ "$WITH_DBD" = 1 ] && pkgs="$pkgs slurmdbd mariadb-server"
missing=""
for p in $pkgs; do dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing="$missing $p"; done
mkdir -p "$SLURM_DIR"/{state,spool,log}
if [ -n "$missing" ]; then
  command -v apt-get >/dev/null || cannot "packages$missing are missing and there is no apt-get"
  say "installing$missing (apt)"
  apt-get update -qq >"$SLURM_DIR/log/apt.log" 2>&1 || cannot "apt-get update failed (see $SLURM_DIR/log/apt.log)"
  # shellcheck disable=SC2086  # $missing is a list of package names
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing >>"$SLURM_DIR/log/apt.log" 2>&1 \
    || cannot "apt-get install$missing failed (see $SLURM_DIR/log/apt.log)"
fi

# ---- slurm.conf ------------------------------------------------------------------------------
host=$(hostname -s); ncpu=$(nproc)
mem=$(( $(awk '/MemTotal/{print $2}' /proc/meminfo) * 8 / 10 / 1024 ))   # MiB, 80% of RAM
acct=accounting_storage/none; [ "$WITH_DBD" = 1 ] && acct=accounting_storage/slurmdbd
cat > "$SLURM_CONF.new" <<CONF
# written by ci/slurm_up.sh: one node on localhost, everything runs as root
ClusterName=ci
SlurmctldHost=$host(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
StateSaveLocation=$SLURM_DIR/state
SlurmdSpoolDir=$SLURM_DIR/spool
SlurmctldPidFile=$SLURM_DIR/slurmctld.pid
SlurmdPidFile=$SLURM_DIR/slurmd.pid
SlurmctldLogFile=$SLURM_DIR/log/slurmctld.log
SlurmdLogFile=$SLURM_DIR/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
MpiDefault=none
ReturnToService=2
AccountingStorageType=$acct
AccountingStorageHost=localhost
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/filetxt
JobCompLoc=$SLURM_DIR/log/jobcomp.txt
KillWait=5
NodeName=$host NodeAddr=127.0.0.1 CPUs=$ncpu RealMemory=$mem State=UNKNOWN
PartitionName=$PARTITION Nodes=ALL Default=YES MaxTime=INFINITE State=UP
CONF
mv -f "$SLURM_CONF.new" "$SLURM_CONF"

# ---- munge -----------------------------------------------------------------------------------
# the Debian package creates /etc/munge/munge.key; make one if it is missing
if [ ! -s /etc/munge/munge.key ]; then
  mungekey --create --force
  chown munge:munge /etc/munge/munge.key; chmod 600 /etc/munge/munge.key
fi
mkdir -p /run/munge && chown munge:munge /run/munge
if ! pgrep -x munged >/dev/null; then   # started here: its pid goes beside the others, for slurm_down.sh
  runuser -u munge -- /usr/sbin/munged
  wait_for 10 "munged's pid file" test -s /run/munge/munged.pid
  cp /run/munge/munged.pid "$SLURM_DIR/munged.pid"
fi
wait_for 10 munged sh -c 'munge -n | unmunge'

# ---- accounting: MariaDB + slurmdbd -----------------------------------------------------------
if [ "$WITH_DBD" = 1 ]; then
  sql() { mariadb -S "$SLURM_DIR/mysql.sock" -uroot "$@"; }
  if ! alive mysql; then
    [ -d "$SLURM_DIR/mysql/mysql" ] || mariadb-install-db --user=root --datadir="$SLURM_DIR/mysql" \
        --auth-root-authentication-method=normal >"$SLURM_DIR/log/mysql_install.log" 2>&1
    nohup mariadbd --user=root --datadir="$SLURM_DIR/mysql" --socket="$SLURM_DIR/mysql.sock" \
        --bind-address=127.0.0.1 --port=3307 --pid-file="$SLURM_DIR/mysql.pid" \
        --log-error="$SLURM_DIR/log/mysql.err" --innodb-buffer-pool-size=64M </dev/null >/dev/null 2>&1 &
  fi
  wait_for 30 MariaDB sql -e 'select 1'
  sql -e "CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY 'slurmpw';
          GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1'; FLUSH PRIVILEGES;"
  cat > "$SLURM_DIR/slurmdbd.conf" <<CONF
AuthType=auth/munge
DbdHost=localhost
DbdAddr=127.0.0.1
SlurmUser=root
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=3307
StorageUser=slurm
StoragePass=slurmpw
StorageLoc=slurm_acct_db
LogFile=$SLURM_DIR/log/slurmdbd.log
PidFile=$SLURM_DIR/slurmdbd.pid
CONF
  chmod 600 "$SLURM_DIR/slurmdbd.conf"   # slurmdbd reads it from the folder of SLURM_CONF
  alive slurmdbd || /usr/sbin/slurmdbd
  wait_for 30 slurmdbd sacctmgr -n show cluster
  sacctmgr -n -P show cluster format=Cluster | grep -qx ci || sacctmgr -i add cluster ci >/dev/null
fi

# ---- controller and node daemon ---------------------------------------------------------------
alive slurmctld || /usr/sbin/slurmctld -i
alive slurmd || /usr/sbin/slurmd
wait_for 30 "the node to become idle" node_ready
say "up: export SLURM_CONF=$SLURM_CONF"
sinfo
