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
#           Ticks ÷ 100 ÷ 20 s ÷ 1,000 readings/s = CPU-s per 1,000 readings.
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
    t0=$(awk '{print $14+$15}' /proc/$gw/stat)
    m0=$(awk '{print $14+$15}' /proc/$gw/task/$gw/stat)
    sleep 20
    t1=$(awk '{print $14+$15}' /proc/$gw/stat)
    m1=$(awk '{print $14+$15}' /proc/$gw/task/$gw/stat)
    echo "$build: $((t1 - t0)) ticks/20 s (event-loop thread $((m1 - m0))), $(grep VmHWM /proc/$gw/status | tr -s ' \t' ' ')"
    kill -9 $gw; wait $gw 2>/dev/null || true
  done
done
