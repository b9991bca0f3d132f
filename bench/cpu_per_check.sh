#!/usr/bin/env bash
# CPU per check, the quick way (BENCHMARKS.md, "Analysis"): 3 runs of BINARY over 100,000
# items with no server latency at concurrency 64; prints wall, CPU µs per check (user+sys),
# checks/s and peak RSS for each. Compare two builds by interleaving them:
#
#   cargo build --profile profiling --bin recheck --example mock_server
#   target/profiling/examples/mock_server --latency 0 &          # prints its URL; PORT below
#   python3 -c 'import sys; sys.path.insert(0, "bench"); import harness; harness.build_template("/tmp/p.db", 100000, "ok")'
#   bench/cpu_per_check.sh target/profiling/recheck PORT [ENV=VALUE...]
#
# The store template /tmp/p.db is copied for each run, never written.
set -euo pipefail
BIN=$1; PORT=$2; shift 2
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
for _ in 1 2 3; do
    cp /tmp/p.db "$work/q.db"
    env "$@" /usr/bin/time -f "%e %U %S %M" -o "$work/time" "$BIN" run --task bench \
        --store "$work/q.db" --url "http://127.0.0.1:$PORT/items/{id}" --concurrency 64 \
        --format json --expect-json /status=done -q --progress never >/dev/null
    read -r w u s m < "$work/time"
    python3 -c "print(f'wall {$w:.2f}s cpu {$u+$s:.2f}s = {($u+$s)/100000*1e6:.1f} us/check  {100000/$w:,.0f}/s rss {$m/1024:.0f}MiB')"
done
