#!/bin/bash
# stop.sh: stops the cluster of tests/slurm/start.sh, its jobs first, then its daemons. Idempotent.
# Signals only the pids in D2V_SLURM_DIR/run/*.pid whose /proc/PID/comm is that daemon's name.
# Usage: tests/slurm/stop.sh [--purge]   (--purge also deletes D2V_SLURM_DIR, /tmp/d2v-slurm)
set -eu
dir=${D2V_SLURM_DIR:-/tmp/d2v-slurm}
timeout=${D2V_SLURM_TIMEOUT:-30}
purge=0
case "${1:-}" in
--purge) purge=1 ;;
"") ;;
*) echo "usage: $0 [--purge]" >&2 && exit 2 ;;
esac
say() { echo "d2v-slurm: $*"; }

if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null || { echo "d2v-slurm: error: needs root or sudo" >&2 && exit 1; }
    n=-n
    [ -t 0 ] && n= # ask for a password only on a terminal
    exec sudo $n env D2V_SLURM_DIR="$dir" D2V_SLURM_TIMEOUT="$timeout" "$(readlink -f "$0")" "$@"
fi

running() { # running NAME -> prints the pid
    local pid
    pid=$(cat "$dir/run/$1.pid" 2>/dev/null) || return 1
    [ -n "$pid" ] && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$1" ] && echo "$pid"
}

# Jobs first, while slurmctld and slurmd can still end them; wait for them, bounded.
export SLURM_CONF=$dir/etc/slurm.conf
if running slurmctld >/dev/null && [ -n "$(squeue -h -o %A 2>/dev/null)" ]; then
    say "cancelling jobs $(squeue -h -o %A | tr '\n' ' ')"
    squeue -h -o %A | xargs -r scancel || true
    end=$(($(date +%s) + timeout))
    while [ -n "$(squeue -h -t R,CG,S 2>/dev/null)" ] && [ "$(date +%s)" -lt "$end" ]; do
        sleep 0.2
    done
fi

# TERM, then KILL what still runs after 10 s. Each takes about 2 s to exit: slurmd and slurmctld
# together, then munged, which they use until they exit.
alive() { [ "$(cat "/proc/$1/comm" 2>/dev/null)" = "$2" ]; }
stop() { # stop NAME...
    local name pid stopped=""
    for name; do
        if pid=$(running "$name"); then
            kill -TERM "$pid" 2>/dev/null || true
            stopped="$stopped $name:$pid"
        fi
        rm -f "$dir/run/$name.pid"
    done
    for name in $stopped; do
        pid=${name#*:} name=${name%:*}
        for _ in $(seq 50); do
            alive "$pid" "$name" || break
            sleep 0.2
        done
        if alive "$pid" "$name"; then
            say "$name (pid $pid) ignored TERM: killing it"
            kill -KILL "$pid" 2>/dev/null || true
        fi
        say "stopped $name (pid $pid)"
    done
}
stop slurmd slurmctld
stop munged

if [ $purge -eq 1 ] && [ -d "$dir" ]; then
    # delete only a directory that start.sh set up
    head -n 1 "$dir/etc/slurm.conf" 2>/dev/null | grep -q '^# written by tests/slurm/start.sh' || {
        echo "d2v-slurm: error: $dir was not set up by tests/slurm/start.sh: not deleting it" >&2
        exit 1
    }
    rm -rf "$dir"
    say "removed $dir"
fi
say "stopped ($dir)"
