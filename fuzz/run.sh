#!/usr/bin/env bash
# Runs fuzz targets that `cargo fuzz build` built (`make fuzz`, `make test`):
#   fuzz/run.sh BIN_DIR SECS JOBS TARGET...
# each for SECS seconds, JOBS at a time, on its corpus (corpus/<target>,
# grown from seeds/<target>), and prints each one's runs, runs a second and
# corpus. A crash, a hang (10 s) or running out of memory fails the run; the
# input is kept in fuzz/artifacts/<target>/ and the log's tail is printed.
set -euo pipefail
cd "$(dirname "$0")"
[ $# -ge 4 ] || { echo "usage: $0 BIN_DIR SECS JOBS TARGET..." >&2; exit 2; }
bin_dir=$1 secs=$2 jobs=$3
shift 3
mkdir -p target

one() {
	local t=$1 log=target/fuzz-$1.log
	mkdir -p "corpus/$t" "artifacts/$t"
	if "$bin_dir/$t" -artifact_prefix="artifacts/$t/" -max_total_time="$secs" -timeout=10 \
		-print_final_stats=1 "corpus/$t" "seeds/$t" >"$log" 2>&1; then
		local runs rate
		runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log")
		rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log")
		echo "fuzz: $t: $runs runs in $secs s ($rate/s), corpus $(find "corpus/$t" -type f | wc -l) inputs"
	else
		tail -40 "$log"
		echo "fuzz: $t failed; its input is kept in fuzz/artifacts/$t/ (log: fuzz/$log)"
		return 1
	fi
}
# JOBS at a time; any target that failed fails the run.
status=0 running=0
for t in "$@"; do
	one "$t" &
	running=$((running + 1))
	if [ "$running" -ge "$jobs" ]; then
		wait -n || status=1
		running=$((running - 1))
	fi
done
while [ "$running" -gt 0 ]; do
	wait -n || status=1
	running=$((running - 1))
done
exit "$status"
