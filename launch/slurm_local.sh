#!/usr/bin/env bash
# A one-node SLURM on this machine, for the launcher's tests and for trying `python -m launch slurm`.
#
#   launch/slurm_local.sh start    # munged, slurmctld and slurmd; waits until the node is idle
#   launch/slurm_local.sh stop
#
# Needs root and Debian's packages (`apt-get install -y slurm-wlm munge`); runs without systemd.
# The node has this machine's CPUs and memory, one partition `local`; processes are tracked
# through /proc (proctrack/linuxproc) and not bound to cores (task/none), so it also runs in
# containers without cgroup delegation. `start` is idempotent: with the daemons up it only waits
# for the node. It writes /etc/slurm/slurm.conf and refuses to replace one it did not write.
set -euo pipefail

CONF=/etc/slurm/slurm.conf
MARK="# Written by launch/slurm_local.sh"
LOG_DIR=/var/log/slurm
READY_TIMEOUT_S=${SLURM_LOCAL_READY_TIMEOUT_S:-60}

die() { echo "slurm_local.sh: $*" >&2; exit 1; }

running() {  # running PIDFILE: whether the process named in PIDFILE is alive
  [[ -s $1 ]] && kill -0 "$(cat "$1")" 2>/dev/null
}

write_conf() {
  if [[ -e $CONF ]] && ! head -n 1 "$CONF" | grep -qF "$MARK"; then
    die "$CONF exists and was not written by this script; not replacing it"
  fi
  local host cpus memory_mb
  host=$(hostname -s)
  cpus=$(nproc)
  # Leave the kernel and the daemons some memory; SLURM refuses a node with less than configured.
  memory_mb=$(awk '/^MemTotal:/ {print int($2 / 1024 * 0.9)}' /proc/meminfo)
  mkdir -p /etc/slurm /var/spool/slurmctld /var/spool/slurmd "$LOG_DIR"
  cat > "$CONF.tmp" <<EOF
$MARK: a one-node cluster for tests.
ClusterName=local
SlurmctldHost=$host
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU_Memory
SchedulerType=sched/backfill
MpiDefault=none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
ReturnToService=2
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=$LOG_DIR/slurmctld.log
SlurmdLogFile=$LOG_DIR/slurmd.log
# Seconds between SIGTERM and SIGKILL when a job is cancelled or a step is killed.
KillWait=10
# Finished jobs stay visible to scontrol show job this long (there is no accounting database).
MinJobAge=600
DefMemPerCPU=$((memory_mb / cpus))
NodeName=$host CPUs=$cpus RealMemory=$memory_mb State=UNKNOWN
PartitionName=local Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
  mv "$CONF.tmp" "$CONF"
}

wait_ready() {
  local host state deadline=$((SECONDS + READY_TIMEOUT_S))
  host=$(hostname -s)
  while :; do
    state=$(sinfo --noheader --nodes="$host" --format=%T 2>/dev/null || true)
    case $state in
      idle|mixed|allocated) echo "slurm_local.sh: node $host is $state"; return 0 ;;
      down*|drain*|fail*) scontrol update nodename="$host" state=resume 2>/dev/null || true ;;
    esac
    if ((SECONDS >= deadline)); then
      die "node $host not ready after ${READY_TIMEOUT_S} s (state: ${state:-none}); see $LOG_DIR/"
    fi
    sleep 1
  done
}

start() {
  [[ $EUID -eq 0 ]] || die "run as root"
  command -v slurmctld >/dev/null && command -v munged >/dev/null \
    || die "slurmctld or munged missing: apt-get install -y slurm-wlm munge"
  if ! running /run/munge/munged.pid; then
    mkdir -p /run/munge /var/log/munge /var/lib/munge
    chown munge:munge /run/munge /var/log/munge /var/lib/munge
    [[ -s /etc/munge/munge.key ]] || { mungekey --create --keyfile=/etc/munge/munge.key
                                       chown munge:munge /etc/munge/munge.key; }
    runuser -u munge -- munged
  fi
  if ! running /run/slurmctld.pid; then
    write_conf
    slurmctld
  fi
  running /run/slurmd.pid || slurmd
  wait_ready
}

stop() {
  local pidfile
  for pidfile in /run/slurmd.pid /run/slurmctld.pid; do
    if running "$pidfile"; then
      kill "$(cat "$pidfile")"
    fi
  done
  if running /run/munge/munged.pid; then
    runuser -u munge -- munged --stop >/dev/null
  fi
}

case ${1:-} in
  start) start ;;
  stop) stop ;;
  *) die "usage: $0 start|stop" ;;
esac
