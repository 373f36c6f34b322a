#!/usr/bin/env bash
# The compute benches, on the GPU when torch sees one, else on the CPU, one after another:
#
#   bash bench/run_all.sh            # from the repository's top level, in its environment
#
# Their output is written to a new file bench-<host>-<device>-<time>.txt in the current folder
# (an existing file of that name is never replaced) and shown as it runs. What each prints and
# its targets: the bench's own docstring; the figures measured so far: docs/performance.md.
set -euo pipefail
set -o noclobber
here="$(cd "$(dirname "$0")" && pwd)"
python="${PYTHON:-python}"
device="$("$python" -c 'import torch; print("cuda" if torch.cuda.is_available() else "cpu")')"
out="bench-$(hostname)-${device}-$(date +%Y%m%d-%H%M%S).txt"
: > "$out"  # refuses (noclobber) if it exists
echo "writing $out"
{
    echo "== bench/model_speed.py --device $device"
    "$python" "$here/model_speed.py" --device "$device" --batches 1 8
    echo "== bench/evaluation_throughput.py --device $device"
    "$python" "$here/evaluation_throughput.py" --device "$device"
    if [ "$device" = cuda ]; then
        echo "== bench/evaluation_throughput.py --device cuda --precision bf16"
        "$python" "$here/evaluation_throughput.py" --device cuda --precision bf16
    fi
    echo "== bench/data_throughput.py"
    "$python" "$here/data_throughput.py"
} 2>&1 | tee -a "$out"
