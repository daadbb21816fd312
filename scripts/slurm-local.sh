#!/usr/bin/env bash
# A single-node SLURM cluster on 127.0.0.1 for the `cluster` tests (Debian's slurm-wlm and munge).
#   scripts/slurm-local.sh start    start munged, slurmctld and slurmd; wait until the node is idle
#   scripts/slurm-local.sh stop     cancel leftover jobs and stop the three daemons it started
#   scripts/slurm-local.sh status   show the node and the queue
# Needs root (the daemons run as root, jobs too). Writes /etc/slurm/slurm.conf, so sbatch, sinfo and
# submitit find the cluster without settings; an existing slurm.conf it did not write is left alone.
# State, logs and pid files go to $KREA_SLURM_DIR (default /var/tmp/krea-sweep-slurm).
set -euo pipefail

DIR="${KREA_SLURM_DIR:-/var/tmp/krea-sweep-slurm}"
CONF=/etc/slurm/slurm.conf
JOB_CONTAINER_CONF=/etc/slurm/job_container.conf
MARK="# written by krea-sweep scripts/slurm-local.sh"
MUNGE_SOCKET=/run/munge/munge.socket.2

die() { echo "slurm-local: $*" >&2; exit 1; }

# Jobs get a private /tmp, as on a node other than the submitting host — unless this checkout
# itself lives under /tmp (or /dev/shm), where a private /tmp would hide the code from the jobs.
REPO_DIR=$(cd "$(dirname "$0")/.." && pwd -P)
case "$REPO_DIR/" in
  /tmp/* | /dev/shm/*) PRIVATE_TMP=0 ;;
  *) PRIVATE_TMP=1 ;;
esac

container_conf() {
  if [ "$PRIVATE_TMP" = 1 ]; then
    printf '%s\n' "# Each job gets a private /tmp and /dev/shm, as on a node other than the submitting host." \
      "JobContainerType=job_container/tmpfs" "PrologFlags=Contain"
  else
    printf '%s\n' "# The checkout is under /tmp: jobs share the host's /tmp (a private one would hide the code)."
  fi
}

write_conf() {
  if [ -f "$CONF" ] && ! head -1 "$CONF" | grep -qF "$MARK"; then
    die "$CONF exists and was not written by this script: not touching a real cluster's config"
  fi
  local mem
  mem=$(awk '/MemTotal/ {print int($2 / 1024 / 2)}' /proc/meminfo)  # half the machine's memory
  mkdir -p /etc/slurm "$DIR/ctld" "$DIR/d"
  cat >"$CONF" <<EOF
$MARK
ClusterName=krea-local
SlurmctldHost=localhost(127.0.0.1)
# Bind every daemon and client to the address its name resolves to (127.0.0.1), not to all.
CommunicationParameters=NoCtldInAddrAny,NoInAddrAny
SlurmctldPort=6817
SlurmdPort=6818
SrunPortRange=60001-60100
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
StateSaveLocation=$DIR/ctld
SlurmdSpoolDir=$DIR/d
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd.pid
SlurmctldLogFile=$DIR/slurmctld.log
SlurmdLogFile=$DIR/slurmd.log
# No cgroups in a container: plain process tracking, no task binding, no accounting daemon.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
$(container_conf)
MpiDefault=none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
# Shards wait on the API, not the CPU: offer 8 CPUs whatever the machine has.
SlurmdParameters=config_overrides
ReturnToService=2
InactiveLimit=0
KillWait=5
MinJobAge=300
SlurmdTimeout=60
Waittime=0
NodeName=localhost NodeAddr=127.0.0.1 CPUs=8 RealMemory=$mem State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP
EOF
  mkdir -p "$DIR/jobtmp"
  printf '%s\nAutoBasePath=true\nBasePath=%s\n' "$MARK" "$DIR/jobtmp" >"$JOB_CONTAINER_CONF"
}

start_munge() {
  [ -S "$MUNGE_SOCKET" ] && munge -n </dev/null >/dev/null 2>&1 && return 0
  [ -s /etc/munge/munge.key ] || { mungekey --create --force >/dev/null 2>&1 \
    || dd if=/dev/urandom of=/etc/munge/munge.key bs=1 count=1024 2>/dev/null; }
  mkdir -p /run/munge /var/log/munge /var/lib/munge
  chown munge:munge /etc/munge/munge.key /run/munge /var/log/munge /var/lib/munge
  chmod 0400 /etc/munge/munge.key
  chmod 0755 /run/munge
  runuser -u munge -- munged --pid-file=/run/munge/munged.pid
  cp /run/munge/munged.pid "$DIR/munged.pid"
  munge -n </dev/null | unmunge >/dev/null || die "munge does not work (see /var/log/munge)"
}

pid_alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

start() {
  command -v slurmctld >/dev/null || die "slurm-wlm is not installed (apt-get install slurm-wlm munge)"
  [ "$(id -u)" -eq 0 ] || die "run as root"
  write_conf
  start_munge
  pid_alive "$DIR/slurmctld.pid" || slurmctld -i 2>>"$DIR/slurmctld.log"  # -i: no old state
  pid_alive "$DIR/slurmd.pid" || slurmd -N localhost
  local _
  for _ in $(seq 60); do
    if [ "$(sinfo -h -n localhost -o %T 2>/dev/null)" = "idle" ]; then
      echo "slurm-local: single-node cluster up on 127.0.0.1 (state and logs in $DIR)"
      return 0
    fi
    scontrol update nodename=localhost state=resume >/dev/null 2>&1 || true
    sleep 1
  done
  tail -n 20 "$DIR/slurmctld.log" "$DIR/slurmd.log" >&2 || true
  stop >&2
  die "the node did not become idle within 60 s"
}

stop_pid() {  # stop_pid NAME PIDFILE: TERM the process recorded there, wait for it to go
  local pid _
  [ -f "$2" ] || return 0
  pid=$(cat "$2")
  if kill -0 "$pid" 2>/dev/null; then
    kill "$pid"
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    kill -0 "$pid" 2>/dev/null && { echo "slurm-local: $1 ($pid) did not stop" >&2; return 1; }
  fi
  rm -f "$2"
}

stop() {
  if pid_alive "$DIR/slurmctld.pid"; then
    scancel --full --user="$(id -un)" 2>/dev/null || true
    sleep 1
  fi
  local file status=0
  stop_pid slurmd "$DIR/slurmd.pid" || status=1
  stop_pid slurmctld "$DIR/slurmctld.pid" || status=1
  stop_pid munged "$DIR/munged.pid" || status=1
  for file in "$CONF" "$JOB_CONTAINER_CONF"; do
    if [ -f "$file" ] && head -1 "$file" | grep -qF "$MARK"; then rm -f "$file"; fi
  done
  [ "$status" -eq 0 ] && echo "slurm-local: stopped"
  return "$status"
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status) sinfo; squeue ;;
  *) die "usage: $0 start|stop|status" ;;
esac
