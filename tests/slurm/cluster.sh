#!/usr/bin/env bash
# A real single-node SLURM cluster on loopback, for tests (see tests/test_slurm.py).
#
#   tests/slurm/cluster.sh start DIR   install Debian's SLURM + munge if missing, write DIR/slurm.conf,
#                                      start munged, slurmctld, slurmd; wait until the node is idle
#   tests/slurm/cluster.sh stop DIR    stop the daemons by the pids in DIR (never by name)
#   tests/slurm/cluster.sh env DIR     print the SLURM_CONF line to export for sbatch/squeue
#
# Needs root (daemons, apt). No systemd, no cgroups: proctrack/linuxproc and
# task/none, as cgroup plugins fail in containers (jobs "complete" without
# output and the node drains). No slurmdbd: the caller passes
# --slurm-status-command squeue to snakemake (sacct would hang it).
set -euo pipefail

cmd=${1:?usage: cluster.sh start|stop|env DIR}
dir=$(realpath -m "${2:?usage: cluster.sh start|stop|env DIR}")

MARKER="written by cacs tests/slurm/cluster.sh"
SYSTEM_CONF=/etc/slurm/slurm.conf

# srun inside a job (the executor's job step) finds its configuration at the
# default path, not through SLURM_CONF: put ours there, but never over a
# configuration that is not ours (a real cluster's).
install_conf() {
    if [[ -e $SYSTEM_CONF ]] && ! grep -q "$MARKER" "$SYSTEM_CONF"; then
        echo "$SYSTEM_CONF exists and is not a cacs test configuration: not touching a real cluster" >&2
        return 1
    fi
    mkdir -p "$(dirname "$SYSTEM_CONF")"
    cp "$dir/slurm.conf" "$SYSTEM_CONF"
}

install_packages() {
    if command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v sbatch >/dev/null \
        && command -v munged >/dev/null; then
        return
    fi
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends slurmctld slurmd slurm-client munge >/dev/null
}

write_conf() {
    local host cpus mem
    host=$(hostname -s)
    cpus=$(nproc)
    mem=$(awk '/MemTotal/ {printf "%d", $2 / 1024 * 0.9}' /proc/meminfo)
    mkdir -p "$dir"/{state,spool,log,run}
    cat >"$dir/slurm.conf" <<CONF
# $MARKER
ClusterName=cacs-test
SlurmctldHost=${host}(127.0.0.1)
SlurmUser=root
SlurmctldPort=16817
SlurmdPort=16818
AuthType=auth/munge
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/run/slurmctld.pid
SlurmdPidFile=$dir/run/slurmd.pid
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=1000
ReturnToService=2
SchedulerType=sched/backfill
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
MpiDefault=none
SlurmctldTimeout=30
SlurmdTimeout=30
InactiveLimit=0
KillWait=5
NodeName=${host} NodeAddr=127.0.0.1 CPUs=${cpus} RealMemory=${mem} State=UNKNOWN
PartitionName=debug Nodes=${host} Default=YES MaxTime=INFINITE State=UP
CONF
}

start_munge() {
    if [[ ! -s /etc/munge/munge.key ]]; then
        mungekey --create >/dev/null 2>&1 || /usr/sbin/mungekey --create
        chown munge:munge /etc/munge/munge.key && chmod 400 /etc/munge/munge.key
    fi
    mkdir -p /run/munge /var/log/munge /var/lib/munge "$dir/munge"
    chown munge:munge /run/munge /var/log/munge /var/lib/munge "$dir/munge"
    # A munged of an earlier run may still be serving the socket: reuse it (and leave it to its owner).
    if ! munge -n >/dev/null 2>&1; then
        su -s /bin/sh munge -c "/usr/sbin/munged --pid-file=$dir/munge/munged.pid" 2>/dev/null \
            || /usr/sbin/munged --force --pid-file="$dir/munge/munged.pid"
    fi
    for _ in $(seq 50); do munge -n >/dev/null 2>&1 && return; sleep 0.2; done
    echo "munged did not come up" >&2
    return 1
}

port_in_use() {
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

alive() {
    [[ -s $1 ]] && kill -0 "$(cat "$1")" 2>/dev/null
}

start() {
    # Another session's test cluster (same ports) would take our jobs and vanish under us when
    # that session stops it; sinfo would even report its node idle. Refuse instead.
    for port in 16817 16818; do
        if port_in_use "$port"; then
            echo "port $port is in use: another SLURM test cluster is running (tests/test_slurm.py serialises" \
                "sessions with a lock; stop the other cluster first)" >&2
            return 1
        fi
    done
    install_packages
    write_conf
    install_conf
    start_munge
    export SLURM_CONF=$dir/slurm.conf
    /usr/sbin/slurmctld -f "$SLURM_CONF" -i
    /usr/sbin/slurmd -f "$SLURM_CONF"
    for _ in $(seq 120); do
        state=$(sinfo -h -o '%t' 2>/dev/null | head -1 || true)
        if [[ $state == idle* ]] && alive "$dir/run/slurmctld.pid" && alive "$dir/run/slurmd.pid"; then
            echo "SLURM_CONF=$SLURM_CONF"
            return 0
        fi
        for daemon in slurmctld slurmd; do
            if [[ -s $dir/run/$daemon.pid ]] && ! alive "$dir/run/$daemon.pid"; then
                echo "$daemon exited:" >&2
                tail -5 "$dir/log/$daemon.log" >&2 || true
                return 1
            fi
        done
        if [[ $state == drain* || $state == down* ]]; then
            scontrol update nodename="$(hostname -s)" state=resume >/dev/null 2>&1 || true
        fi
        sleep 0.5
    done
    echo "SLURM node did not become idle (state: ${state:-none}); logs in $dir/log" >&2
    return 1
}

stop_pid() {
    local file=$1
    [[ -s $file ]] || return 0
    local pid
    pid=$(cat "$file")
    if kill "$pid" 2>/dev/null; then
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -9 "$pid" 2>/dev/null || true
    fi
    rm -f "$file"
}

stop() {
    stop_pid "$dir/run/slurmd.pid"
    stop_pid "$dir/run/slurmctld.pid"
    stop_pid "$dir/munge/munged.pid"
    # Only the copy this cluster installed (another session's is not ours to remove).
    if [[ -e $SYSTEM_CONF && -e $dir/slurm.conf ]] && cmp -s "$SYSTEM_CONF" "$dir/slurm.conf"; then
        rm -f "$SYSTEM_CONF"
    fi
}

case $cmd in
    start) start ;;
    stop) stop ;;
    env) echo "SLURM_CONF=$dir/slurm.conf" ;;
    *) echo "unknown command $cmd" >&2; exit 2 ;;
esac
