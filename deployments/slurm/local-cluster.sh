#!/usr/bin/env bash
# A one-node Slurm cluster on this machine, as root, without systemd (tests and CI).
#
# Installs munge, slurm-wlm and gromacs from Debian when missing, writes a munge key and a
# slurm.conf for this host (name, CPUs, memory), starts munged, slurmctld and slurmd, and
# waits until `sinfo` reports the node idle. Idempotent: when the daemons are up, the node
# is usable and slurm.conf is what this script writes, it exits at once; a slurm.conf
# written by an older version of this script is rewritten and the daemons restarted
# (running jobs survive). No accounting database: read states from squeue/scontrol.
#
# Fault enforcement the tests rely on (tests/flows/test_slurm.py):
# - memory: jobacct_gather/linux samples each job's RSS every second and OverMemoryKill
#   kills a job over its --mem (state OUT_OF_MEMORY, "exceeded memory limit" in its stderr);
# - preemption: preempt/partition_prio; the one partition `debug` (PriorityTier 2) is never
#   preempted. A lower-tier partition added at run time (the preemption test creates one
#   with `scontrol create` and deletes it) is preempted (CANCEL) by jobs of `debug`.
#
# Usage: sudo bash deployments/slurm/local-cluster.sh      (HELIXFLOW_SLURM_TIMEOUT=60)
set -euo pipefail

TIMEOUT="${HELIXFLOW_SLURM_TIMEOUT:-60}"
CONF=/etc/slurm/slurm.conf
MARKER="# written by helixflow deployments/slurm/local-cluster.sh"
log() { echo "local-cluster: $*" >&2; }

node_state() { sinfo -h -N -o '%T' 2>/dev/null | head -n1 | tr -d '*~#!%$@^-' || true; }
usable() { case "$(node_state)" in idle|mixed|allocated|completing) return 0 ;; *) return 1 ;; esac; }

host="$(hostname -s)"

# The slurm.conf this script wants, on stdout (needs slurmd for `slurmd -C`).
render_conf() {
  # The node line as slurmd itself measures it (CPUs, sockets, cores, RealMemory).
  local nodeline mem
  nodeline="$(slurmd -C 2>/dev/null | head -n1 || true)"
  case "$nodeline" in
    NodeName=*) ;;
    *) mem=$(awk '/MemTotal/ {print int($2/1024)}' /proc/meminfo)
       nodeline="NodeName=$host CPUs=$(nproc) RealMemory=$mem" ;;
  esac
  # Leave some memory to the OS, and make the node name this host's short name.
  nodeline="$(echo "$nodeline" | sed -E "s/^NodeName=[^ ]+/NodeName=$host/" \
    | awk '{for (i=1;i<=NF;i++) if ($i ~ /^RealMemory=/) {split($i,a,"="); m=int(a[2]*0.9); $i="RealMemory=" m} print}')"
  cat <<CONF
$MARKER
ClusterName=helixflow
SlurmctldHost=$host
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SchedulerType=sched/backfill
# Memory enforcement without cgroups: sample every task's memory each second and kill a
# job over its --mem (OUT_OF_MEMORY).
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=task=1
JobAcctGatherParams=OverMemoryKill
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
# Jobs of a higher-tier partition preempt (cancel) jobs of a lower one; only debug here.
PreemptType=preempt/partition_prio
PreemptMode=CANCEL
ReturnToService=2
# Finished jobs stay visible to squeue/scontrol this long (no accounting database).
MinJobAge=300
KillWait=5
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=/run/slurm/slurmctld.pid
SlurmdPidFile=/run/slurm/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
$nodeline State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP PriorityTier=2 PreemptMode=OFF
CONF
}

# 0: slurm.conf is ours and current, or not ours (kept as it is); 1: ours but outdated.
conf_current() {
  [ -e "$CONF" ] && ! grep -qF "$MARKER" "$CONF" && return 0
  [ -e "$CONF" ] && command -v slurmd >/dev/null 2>&1 && cmp -s <(render_conf) "$CONF"
}

if command -v sinfo >/dev/null 2>&1 && pgrep -x slurmctld >/dev/null && pgrep -x slurmd >/dev/null \
   && usable && conf_current; then
  exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
  log "must run as root to install, configure and start Slurm (it is not up, or its slurm.conf is outdated)"; exit 1
fi

# -- packages ------------------------------------------------------------------------------
need=()
command -v munged >/dev/null 2>&1 || need+=(munge)
command -v slurmctld >/dev/null 2>&1 || need+=(slurmctld)
command -v slurmd >/dev/null 2>&1 || need+=(slurmd)
command -v sbatch >/dev/null 2>&1 || need+=(slurm-client)
command -v gmx >/dev/null 2>&1 || need+=(gromacs)
if [ ${#need[@]} -gt 0 ]; then
  log "installing: ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  # No init system in a container: keep maintainer scripts from starting daemons.
  policy=/usr/sbin/policy-rc.d
  made_policy=0
  if [ ! -e "$policy" ]; then printf '#!/bin/sh\nexit 101\n' >"$policy"; chmod +x "$policy"; made_policy=1; fi
  apt-get -o DPkg::Lock::Timeout=900 update -qq
  apt-get -o DPkg::Lock::Timeout=900 install -y -qq --no-install-recommends "${need[@]}" slurm-wlm-basic-plugins >/dev/null
  [ "$made_policy" -eq 1 ] && rm -f "$policy"
fi

# -- munge ---------------------------------------------------------------------------------
id munge >/dev/null 2>&1 || useradd --system --no-create-home --shell /usr/sbin/nologin munge
install -d -o munge -g munge -m 0700 /etc/munge /var/lib/munge /var/log/munge
install -d -o munge -g munge -m 0755 /run/munge
if [ ! -s /etc/munge/munge.key ]; then
  dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
fi
chown munge:munge /etc/munge/munge.key
chmod 0400 /etc/munge/munge.key
if ! pgrep -x munged >/dev/null; then
  rm -f /run/munge/munged.pid
  runuser -u munge -- /usr/sbin/munged
fi
for _ in $(seq 50); do munge -n </dev/null >/dev/null 2>&1 && break; sleep 0.1; done
munge -n </dev/null | unmunge >/dev/null

# -- slurm.conf ----------------------------------------------------------------------------
getent hosts "$host" >/dev/null 2>&1 || echo "127.0.1.1 $host" >>/etc/hosts
install -d -m 0755 /etc/slurm /var/spool/slurmctld /var/spool/slurmd /var/log/slurm /run/slurm
if [ -e "$CONF" ] && ! grep -qF "$MARKER" "$CONF"; then
  log "keeping the existing $CONF (not written by this script)"
elif ! conf_current; then
  render_conf >"$CONF.tmp"
  mv "$CONF.tmp" "$CONF"
  # New plugins (accounting gather, preemption) need the daemons restarted, not
  # `scontrol reconfigure`; jobs keep running (slurmstepd outlives slurmd) and slurmctld
  # reloads its state from StateSaveLocation.
  for daemon in slurmctld slurmd; do
    pid="$(pgrep -x "$daemon" || true)"
    [ -n "$pid" ] || continue
    log "restarting $daemon for the new $CONF"
    kill $pid
    for _ in $(seq 100); do pgrep -x "$daemon" >/dev/null || break; sleep 0.1; done
  done
fi

# -- daemons -------------------------------------------------------------------------------
pgrep -x slurmctld >/dev/null || slurmctld
pgrep -x slurmd >/dev/null || slurmd

deadline=$((SECONDS + TIMEOUT))
resumed=0
while [ $SECONDS -lt $deadline ]; do
  if usable; then
    log "node $host is $(node_state)"; exit 0
  fi
  state="$(node_state)"
  if [ "$resumed" -eq 0 ] && { [ "$state" = down ] || [ "$state" = drained ] || [ "$state" = draining ]; }; then
    scontrol update NodeName="$host" State=RESUME >/dev/null 2>&1 || true
    resumed=1
  fi
  sleep 0.5
done
log "node $host not idle after ${TIMEOUT}s (state: $(node_state)); see /var/log/slurm/"
tail -n 20 /var/log/slurm/slurmctld.log /var/log/slurm/slurmd.log >&2 || true
exit 1
