#!/bin/bash
# start.sh: starts a single-node Slurm cluster (munged, slurmctld, slurmd) under one directory.
# Idempotent: our daemons that are alive are kept, missing ones are started. Stop with stop.sh.
# Usage: tests/slurm/start.sh && . "${D2V_SLURM_DIR:-/tmp/d2v-slurm}/env.sh"
# Env: D2V_SLURM_DIR (/tmp/d2v-slurm), D2V_SLURM_CTLD_PORT (6817), D2V_SLURM_SLURMD_PORT (6818),
#      D2V_SLURM_CPUS (nproc, at least 2), D2V_SLURM_TIMEOUT (30 s per wait), D2V_SLURM_APT_WAIT
#      (300 s for the dpkg lock).
set -eu
dir=${D2V_SLURM_DIR:-/tmp/d2v-slurm}
ctld_port=${D2V_SLURM_CTLD_PORT:-6817}
slurmd_port=${D2V_SLURM_SLURMD_PORT:-6818}
cpus=${D2V_SLURM_CPUS:-$(nproc)}
[ "$cpus" -ge 2 ] || cpus=2 # jobs/pretrain.sbatch asks for 2 tasks
timeout=${D2V_SLURM_TIMEOUT:-30}
apt_wait=${D2V_SLURM_APT_WAIT:-300}
say() { echo "d2v-slurm: $*"; }
die() {
    echo "d2v-slurm: error: $*" >&2
    exit 1
}

# The daemons run as root (SlurmUser=root): get root first, keeping the settings.
if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null || die "needs root or sudo"
    n=-n
    [ -t 0 ] && n= # ask for a password only on a terminal
    exec sudo $n env D2V_SLURM_DIR="$dir" D2V_SLURM_CTLD_PORT="$ctld_port" \
        D2V_SLURM_SLURMD_PORT="$slurmd_port" D2V_SLURM_CPUS="$cpus" D2V_SLURM_TIMEOUT="$timeout" \
        D2V_SLURM_APT_WAIT="$apt_wait" "$(readlink -f "$0")" "$@"
fi

# Packages: install the missing ones; another apt holding the dpkg lock is waited for, bounded.
missing=""
for p in munge slurmctld slurmd slurm-client; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" ||
        missing="$missing $p"
done
if [ -n "$missing" ]; then
    say "installing$missing"
    export DEBIAN_FRONTEND=noninteractive
    aptlog=$(mktemp /tmp/d2v-slurm-apt.XXXXXX)
    end=$(($(date +%s) + apt_wait))
    updated=0
    until apt-get install -y -qq --no-install-recommends $missing >"$aptlog" 2>&1; do
        [ "$(date +%s)" -lt "$end" ] ||
            die "apt-get install$missing did not succeed in ${apt_wait}s (see $aptlog)"
        if grep -qiE 'could not get lock|unable to acquire|unable to lock' "$aptlog"; then
            sleep 5 # another apt or dpkg is running
        elif [ $updated -eq 0 ]; then # stale or missing package lists: refresh them once
            apt-get update -qq >>"$aptlog" 2>&1 && updated=1 || sleep 5
        else
            die "apt-get install$missing failed (see $aptlog)"
        fi
    done
    rm -f "$aptlog"
fi

# A daemon counts as ours when the pid in its pid file runs a program of that name.
running() { # running NAME -> prints the pid
    local pid
    pid=$(cat "$dir/run/$1.pid" 2>/dev/null) || return 1
    [ -n "$pid" ] && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$1" ] && echo "$pid"
}
ctld_up() { scontrol ping 2>/dev/null | grep -q 'is UP'; }
port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
wait_for() { # wait_for CMD...: poll CMD every 0.2 s for at most $timeout s
    local end=$(($(date +%s) + timeout))
    until "$@" >/dev/null 2>&1; do
        [ "$(date +%s)" -lt "$end" ] || return 1
        sleep 0.2
    done
}

mkdir -p "$dir"/etc "$dir"/munge "$dir"/run "$dir"/log "$dir"/state "$dir"/spool
chmod 755 "$dir" "$dir"/etc "$dir"/run "$dir"/log # run/: the munge socket, for every user
chmod 700 "$dir"/munge
[ -s "$dir/munge/munge.key" ] || {
    head -c 1024 /dev/urandom >"$dir/munge/munge.key"
    chmod 400 "$dir/munge/munge.key"
}

# slurm.conf: no systemd, no cgroups, no accounting; short scheduler and requeue delays for tests.
conf=$dir/etc/slurm.conf
host=$(hostname -s)
mem=$(awk '/^MemTotal/ { printf "%d", $2 / 1024 * 0.8 }' /proc/meminfo)
cat >"$conf.new" <<EOF
# written by tests/slurm/start.sh
ClusterName=d2v
SlurmctldHost=$host(127.0.0.1)
SlurmctldPort=$ctld_port
SlurmdPort=$slurmd_port
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
# cred_expire: a requeued job may start again after cred_expire + 1 s (default 120 s)
AuthInfo=socket=$dir/run/munge.socket.2,cred_expire=10
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/run/slurmctld.pid
SlurmdPidFile=$dir/run/slurmd.pid
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd.log
PlugStackConfig=$dir/etc/plugstack.conf
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=pmix
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=2,bf_interval=2
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SlurmdParameters=config_overrides
EnforcePartLimits=ALL
ReturnToService=2
JobRequeue=1
KillWait=10
MinJobAge=600
MailProg=/bin/true
NodeName=$host NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP
EOF
: >"$dir/etc/plugstack.conf" # no SPANK plugins from /etc/slurm
if cmp -s "$conf" "$conf.new"; then
    rm "$conf.new"
elif running slurmctld >/dev/null || running slurmd >/dev/null; then
    rm "$conf.new"
    die "settings differ from the running cluster's $conf: run tests/slurm/stop.sh first"
else
    mv "$conf.new" "$conf"
fi
export SLURM_CONF=$conf
printf 'export SLURM_CONF=%s\n' "$conf" >"$dir/env.sh"

if pid=$(running munged); then
    say "munged already running (pid $pid)"
else
    rm -f "$dir"/run/munge.socket.2*
    munged --force --socket="$dir/run/munge.socket.2" --key-file="$dir/munge/munge.key" \
        --pid-file="$dir/run/munged.pid" --seed-file="$dir/munge/munged.seed" \
        --log-file="$dir/log/munged.log" || die "munged did not start (see $dir/log/munged.log)"
    wait_for munge -n -S "$dir/run/munge.socket.2" ||
        die "munged does not answer after ${timeout}s (see $dir/log/munged.log)"
    say "munged started (pid $(running munged))"
fi

if pid=$(running slurmctld); then
    say "slurmctld already running (pid $pid)"
else
    port_busy "$ctld_port" &&
        die "port $ctld_port is in use (another slurmctld?): set D2V_SLURM_CTLD_PORT"
    # -c: start without the jobs of an earlier run
    slurmctld -c -f "$conf" || die "slurmctld did not start (see $dir/log/slurmctld.log)"
    wait_for ctld_up ||
        die "slurmctld does not answer after ${timeout}s (see $dir/log/slurmctld.log)"
    say "slurmctld started (pid $(running slurmctld))"
fi

if pid=$(running slurmd); then
    say "slurmd already running (pid $pid)"
else
    port_busy "$slurmd_port" &&
        die "port $slurmd_port is in use (another slurmd?): set D2V_SLURM_SLURMD_PORT"
    slurmd -f "$conf" || die "slurmd did not start (see $dir/log/slurmd.log)"
    wait_for running slurmd ||
        die "slurmd is not running after ${timeout}s (see $dir/log/slurmd.log)"
    say "slurmd started (pid $(running slurmd))"
fi

# Ready when the node has registered; a free node must also run a job step end to end
# (slurmctld reports a dead slurmd as idle for SlurmdTimeout).
node_state() { sinfo -h -N -n "$host" -o %t 2>/dev/null; }
node_up() { node_state | grep -qE '^(idle|mix|alloc)$'; }
wait_for node_up ||
    die "node $host is not up after ${timeout}s (state '$(node_state)'; see $dir/log/slurmd.log)"
if [ "$(node_state)" = idle ]; then
    timeout "$timeout" srun -N1 -n1 --mpi=none -t 1 -J d2v-slurm-smoke true ||
        die "smoke test 'srun true' failed (see $dir/log/slurmd.log, $dir/log/slurmctld.log)"
fi
say "ready: node $host, $cpus cpus (use it after: . $dir/env.sh)"
