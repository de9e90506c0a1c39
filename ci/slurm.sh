#!/usr/bin/env bash
# A real two-node Slurm cluster on this machine, from Debian's packages
# (issue 12; recipes in CLUSTER.md): munge, slurmctld, and two slurmd (n1,
# n2) on one host with their own ports, no cgroups, no accounting database.
#
# Idempotent: installs only what is missing (apt-get, as root or through
# sudo), rewrites the configuration, and (re)starts the daemons only when
# they are not running with it.
#
# Usage:
#   ci/slurm.sh start            install if needed, start, wait until both nodes are idle
#   ci/slurm.sh stop             stop the daemons by their pid files (SIGKILL after a few seconds), and munged
#   ci/slurm.sh test [ARGS...]   start, run `cargo test --test slurm ARGS`, stop (in a trap)
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck source=ci/step.sh
. ci/step.sh

sudo_() { if [[ $(id -u) -eq 0 ]]; then "$@"; else sudo "$@"; fi; }
conf=/etc/slurm/slurm.conf

install() {
    if command -v slurmctld >/dev/null && command -v slurmd >/dev/null &&
        command -v srun >/dev/null && command -v munged >/dev/null; then
        return
    fi
    sudo_ apt-get update -qq
    sudo_ env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
        --no-install-recommends munge slurmctld slurmd slurm-client >/dev/null
}

start_munge() {
    if munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then return; fi
    sudo_ mkdir -p /etc/munge /var/lib/munge /var/log/munge /run/munge
    if [[ ! -s /etc/munge/munge.key ]]; then
        sudo_ dd if=/dev/urandom of=/etc/munge/munge.key bs=128 count=1 status=none
    fi
    sudo_ chown -R munge:munge /etc/munge /var/lib/munge /var/log/munge /run/munge
    sudo_ chmod 0400 /etc/munge/munge.key
    sudo_ runuser -u munge -- munged
    for _ in $(seq 50); do
        if munge -n | unmunge >/dev/null 2>&1; then return; fi
        sleep 0.1
    done
    echo "munged did not come up" >&2
    return 1
}

write_conf() {
    local host mem cpus
    host=$(hostname -s)
    cpus=$(nproc)
    # A node that reports less memory than configured is refused: stay below.
    mem=$(($(awk '/MemTotal/ {print int($2 / 1024)}' /proc/meminfo) / 2))
    sudo_ mkdir -p /etc/slurm /var/spool/slurmctld /var/spool/slurmd /var/log/slurm /run/slurm
    sudo_ tee "$conf.new" >/dev/null <<EOF
ClusterName=procpool-ci
SlurmctldHost=$host(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
KillWait=5
InactiveLimit=0
MpiDefault=none
SlurmctldPidFile=/run/slurm/slurmctld.pid
SlurmdPidFile=/run/slurm/slurmd-%n.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd-%n.log
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd/%n
NodeName=n1 NodeHostname=$host NodeAddr=127.0.0.1 Port=17001 CPUs=$cpus RealMemory=$mem State=UNKNOWN
NodeName=n2 NodeHostname=$host NodeAddr=127.0.0.1 Port=17002 CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=ci Nodes=n1,n2 Default=YES MaxTime=INFINITE State=UP OverSubscribe=YES
EOF
    sudo_ mkdir -p /var/spool/slurmd/n1 /var/spool/slurmd/n2
    if ! cmp -s "$conf.new" "$conf"; then
        sudo_ mv "$conf.new" "$conf"
        stop_daemons
    else
        sudo_ rm -f "$conf.new"
    fi
}

pidfiles=(/run/slurm/slurmd-n1.pid /run/slurm/slurmd-n2.pid /run/slurm/slurmctld.pid)
munge_pid=/run/munge/munged.pid
# The daemon whose pid file this is runs (its pid is alive).
running() { [[ -s $1 ]] && sudo_ kill -0 "$(cat "$1")" 2>/dev/null; }

# Stops the daemons this script started, by the pids in their pid files.
stop_daemons() {
    local f
    for f in "${pidfiles[@]}"; do
        if running "$f"; then sudo_ kill "$(cat "$f")" || true; fi
    done
    for _ in $(seq 30); do
        local up=0
        for f in "${pidfiles[@]}"; do if running "$f"; then up=1; fi; done
        if [[ $up -eq 0 ]]; then return 0; fi
        sleep 0.2
    done
    # A slurmd with a hung step may ignore SIGTERM (CLUSTER.md).
    for f in "${pidfiles[@]}"; do
        if running "$f"; then sudo_ kill -KILL "$(cat "$f")" || true; fi
    done
}

# `stop`: the Slurm daemons, then munged.
stop_all() {
    stop_daemons
    if running "$munge_pid"; then sudo_ kill "$(cat "$munge_pid")" || true; fi
}

start_daemons() {
    if ! running /run/slurm/slurmctld.pid; then sudo_ slurmctld -c; fi
    for n in n1 n2; do
        if ! running "/run/slurm/slurmd-$n.pid"; then sudo_ slurmd -N "$n"; fi
    done
    for _ in $(seq 100); do
        if [[ $(sinfo -h -N -o '%N %t' 2>/dev/null | grep -c ' idle$') -eq 2 ]]; then
            return 0
        fi
        # Nodes left down or drained by an earlier run come back.
        sinfo -h -N -o '%N %t' 2>/dev/null | awk '$2 ~ /down|drain|fail|comp/ {print $1}' |
            while read -r n; do sudo_ scontrol update NodeName="$n" State=RESUME 2>/dev/null || true; done
        sleep 0.2
    done
    echo "Slurm nodes are not idle:" >&2
    sinfo -N >&2 || true
    return 1
}

start() {
    step slurm-install install
    step munge start_munge
    step slurm-conf write_conf
    step slurm-daemons start_daemons
    sinfo -N
}

case "${1:-start}" in
    start) start ;;
    stop) stop_all ;;
    test)
        shift
        start
        trap stop_all EXIT
        # The sbatch and one-program tests run these examples.
        step slurm-build cargo build -p procpool --example slurm --example one_program
        step slurm-tests cargo test -p procpool --test slurm -- "$@"
        ;;
    *)
        echo "usage: $0 [start|stop|test [ARGS...]]" >&2
        exit 2
        ;;
esac
