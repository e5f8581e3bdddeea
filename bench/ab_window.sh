#!/usr/bin/env bash
# Same-host A/B of two builds of the gateway on one TCP-fleet case: CPU ticks per window.
#
#   bench/ab_window.sh KEEP_DIR BUILD_A BUILD_B [ROUNDS]
#
# KEEP_DIR  a folder kept by `python -m bench.tcp_fleet --only a --keep` (it holds sim.yaml
#           and run*/gw.yaml); BUILD_A/BUILD_B: source trees put first on PYTHONPATH, e.g.
#           a `git worktree add /tmp/old <commit>` and the working tree. Each round starts the
#           gateway of A then of B against the same simulator, warms up 8 s, then measures
#           20 s: utime+stime ticks of the process (and of its event-loop thread) from /proc and the
#           peak RSS. The builds alternate, so a machine that slows down mid-run shows in both.
#           Ticks ÷ 100 ÷ 20 s ÷ 1,000 readings/s = CPU-s per 1,000 readings — when the build kept
#           up; so each round also counts the readings the store committed with a slot inside the
#           window (3 s after the window, before the kill) and prints ticks per 1,000 of them.
set -euo pipefail
keep=$1; a=$2; b=$3; rounds=${4:-2}
py=$(dirname "$(readlink -f "$0")")/../.venv/bin/python
cfg=$(ls "$keep"/run*/gw.yaml | head -1)
work=$(mktemp -d)
trap 'kill -9 ${gw:-} ${sim:-} 2>/dev/null || true; rm -rf "$work"' EXIT
sed "s#data_dir: [^}]*#data_dir: $work/data#" "$cfg" > "$work/gw.yaml"
cd "$work"   # `python -m` puts the working directory first on sys.path: it must hold no gateway/
"$py" -m gateway.cli --log-level warning simulate -c "$keep/sim.yaml" > "$work/sim.log" 2>&1 &
sim=$!
sleep 3
for _ in $(seq 1 "$rounds"); do
  for build in "$a" "$b"; do
    rm -rf "$work/data"
    PYTHONPATH=$build "$py" -m gateway.cli --log-level warning run -c "$work/gw.yaml" > "$work/gw.log" 2>&1 &
    gw=$!
    sleep 8
    w0=$(date +%s.%N)
    t0=$(awk '{print $14+$15}' /proc/$gw/stat)
    m0=$(awk '{print $14+$15}' /proc/$gw/task/$gw/stat)
    sleep 20
    t1=$(awk '{print $14+$15}' /proc/$gw/stat)
    m1=$(awk '{print $14+$15}' /proc/$gw/task/$gw/stat)
    w1=$(date +%s.%N)
    sleep 3   # readings with a slot in the window finish and commit
    n=$("$py" -c 'import sqlite3, sys
c = sqlite3.connect(f"file:{sys.argv[1]}?mode=ro", uri=True)
print(c.execute("SELECT count(*) FROM outbox WHERE kind = ? AND slot >= ? AND slot < ?",
                ("reading", float(sys.argv[2]), float(sys.argv[3]))).fetchone()[0])' \
        "$work/data/amr-gateway.sqlite" "$w0" "$w1" 2>/dev/null || echo 0)
    echo "$build: $((t1 - t0)) ticks/20 s, $n readings committed, $(( n ? (t1 - t0) * 1000 / n : 0 )) ticks per 1,000 readings (event-loop thread $((m1 - m0))), $(grep VmHWM /proc/$gw/status | tr -s ' \t' ' '), load $(cut -d' ' -f1 /proc/loadavg), $(grep -c -E 'ERROR|Traceback' "$work/gw.log" || true) error lines in its log"
    grep -m1 -E 'ERROR|Traceback' "$work/gw.log" | cut -c1-200 || true
    kill -9 $gw; wait $gw 2>/dev/null || true
  done
done
