#!/usr/bin/env bash
# The switch-agent figures of the README, one JSON object per line on stdout:
#   1. verified at 0/1/5% loss with 2, 4 and 8 workers (64-value packets),
#   2. agent packets/s against a plain UDP sender/receiver pair, per datapath (64-value packets),
#      and against a pair on the agent's own batched datapath,
#   3. jumbo-packet goodput against the PS path (2 workers, TCP and in-process), alternated 5 times.
# Usage: benches/allreduce_grid.sh [FLOATS] > bench-runs/<date>-<machine>/allreduce.jsonl
set -euo pipefail
cd "$(dirname "$0")/.."
floats=${1:-4000000}
cargo build --release --quiet
bin=target/release/paramserv
for workers in 2 4 8; do
    for loss in 0 0.01 0.05; do
        "$bin" bench allreduce --json --workers "$workers" --loss "$loss" --elems-per-packet 64 \
            --floats "$floats" --rounds 3 --udp-baseline-seconds 0
    done
done
for datapath in io_uring mmsg plain; do
    "$bin" bench allreduce --json --workers 2 --elems-per-packet 64 --floats "$floats" --rounds 5 \
        --datapath "$datapath" --udp-baseline-seconds 2
done
for datapath in io_uring mmsg; do
    "$bin" bench allreduce --json --workers 2 --elems-per-packet 64 --floats "$floats" --rounds 5 \
        --datapath "$datapath" --udp-baseline-seconds 2 --udp-baseline-datapath "$datapath"
done
for _ in 1 2 3 4 5; do
    for k in 2048 8192; do
        "$bin" bench allreduce --json --workers 2 --elems-per-packet "$k" --slots 32 --floats "$floats" \
            --rounds 5 --udp-baseline-seconds 0
    done
    "$bin" bench allreduce --json --backend ps --workers 2 --floats "$floats" --rounds 5 --transport tcp
    "$bin" bench allreduce --json --backend ps --workers 2 --floats "$floats" --rounds 5 --transport inproc
done
