#!/bin/sh
# restart.sh PIDFILE LOGFILE COMMAND [ARG...]
#
# Stops the process whose pid is in PIDFILE, if any (SIGTERM; SIGKILL after 10 s) and waits until it is gone,
# then starts COMMAND in the background with its output appended to LOGFILE, and writes its pid to PIDFILE.
# The tests start each receiver with it, and pass it to `klikit check --restart` to restart the receiver.
set -eu
pidfile=$1
log=$2
shift 2

running() {
    # A zombie (exited, not yet reaped) counts as gone.
    kill -0 "$1" 2>/dev/null && ! grep -q ') Z' "/proc/$1/stat" 2>/dev/null
}

if [ -s "$pidfile" ]; then
    pid=$(cat "$pidfile")
    kill -TERM "$pid" 2>/dev/null || true
    tries=0
    while running "$pid"; do
        tries=$((tries + 1))
        if [ "$tries" -eq 200 ]; then
            kill -KILL "$pid" 2>/dev/null || true
        elif [ "$tries" -ge 300 ]; then
            echo "restart.sh: process $pid does not stop" >&2
            exit 1
        fi
        sleep 0.05
    done
fi
"$@" >>"$log" 2>&1 </dev/null &
echo $! >"$pidfile"
