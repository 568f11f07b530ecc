#!/usr/bin/env bash
# A one-node SLURM on localhost for the cluster tests (Debian slurm-wlm + munge; run as root).
# Idempotent: exits 0 at once when the node already answers `sinfo` as idle/mixed/allocated and
# runs this configuration; restarts the daemons when the configuration changed.
# Usage: bash tests/cluster/start_slurm.sh
set -euo pipefail

HOST=$(hostname -s)

node_up() {
  command -v sinfo >/dev/null 2>&1 &&
    timeout 10 sinfo -h -N -o '%T' 2>/dev/null | grep -Eq '^(idle|mixed|allocated|completing)'
}

# One node with this machine's CPUs and most of its memory, one default partition. A job over
# its memory request is killed (polled every second), as on a cluster that enforces --mem.
CPUS=$(nproc)
MEM_MB=$(awk '/MemTotal/ {print int($2 / 1024 * 0.9)}' /proc/meminfo)
CONF=$(cat <<EOF_CONF
# Written by brainprop's tests/cluster/start_slurm.sh: a one-node test cluster.
ClusterName=brainprop
SlurmctldHost=${HOST}
SlurmUser=root
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=task=1
JobAcctGatherParams=OverMemoryKill
MpiDefault=none
ReturnToService=2
SchedulerType=sched/backfill
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
MinJobAge=300
KillWait=5
InactiveLimit=0
NodeName=${HOST} CPUs=${CPUS} RealMemory=${MEM_MB} State=UNKNOWN
PartitionName=debug Nodes=${HOST} Default=YES MaxTime=INFINITE State=UP
EOF_CONF
)

if node_up && [ "$(cat /etc/slurm/slurm.conf 2>/dev/null)" == "${CONF}" ]; then
  echo "start_slurm: SLURM already up on ${HOST}"
  exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
  echo "start_slurm: needs root (installs packages, starts munged, slurmctld and slurmd)" >&2
  exit 1
fi

if ! command -v slurmctld >/dev/null 2>&1 || ! command -v munged >/dev/null 2>&1; then
  echo "start_slurm: installing slurm-wlm and munge"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends slurm-wlm munge >/dev/null
fi

# munge: a 1024-byte key owned by munge, mode 400; the daemon runs as the munge user.
if [ ! -s /etc/munge/munge.key ]; then
  mkdir -p /etc/munge
  dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
fi
chown munge:munge /etc/munge/munge.key
chmod 400 /etc/munge/munge.key
mkdir -p /run/munge /var/log/munge /var/lib/munge
chown munge:munge /run/munge /var/log/munge /var/lib/munge
if ! pgrep -u munge -x munged >/dev/null 2>&1; then
  runuser -u munge -- munged
fi

mkdir -p /etc/slurm /var/spool/slurmctld /var/spool/slurmd /var/log/slurm
if [ "$(cat /etc/slurm/slurm.conf 2>/dev/null)" != "${CONF}" ]; then
  echo "${CONF}" > /etc/slurm/slurm.conf
  # Daemons started with another configuration read it only at start.
  pkill -x slurmctld || true
  pkill -x slurmd || true
  sleep 2
fi
pgrep -x slurmctld >/dev/null 2>&1 || slurmctld
pgrep -x slurmd >/dev/null 2>&1 || slurmd

for _ in $(seq 1 30); do
  if node_up; then
    echo "start_slurm: SLURM up on ${HOST} (${CPUS} CPUs, ${MEM_MB} MB)"
    exit 0
  fi
  # A node left DOWN/DRAIN by an earlier crash comes back with RESUME.
  scontrol update NodeName="${HOST}" State=RESUME >/dev/null 2>&1 || true
  sleep 1
done
echo "start_slurm: SLURM did not come up; see /var/log/slurm/slurmctld.log and slurmd.log" >&2
sinfo >&2 || true
exit 1
