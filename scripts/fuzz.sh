#!/usr/bin/env bash
# Runs every Go fuzz target briefly (FUZZTIME each). A finding (Go writes
# "Failing input written to testdata/fuzz/...") fails the run. Go's fuzzer
# can also end a short run with a bare "context deadline exceeded" when the
# deadline lands while a worker is busy on a slow input or minimising; that is
# the engine running out of time, not a bug found, so it is reported and the
# run goes on.
set -uo pipefail
GO=${GO:-go}
FUZZTIME=${FUZZTIME:-8s}
FUZZMINIMIZETIME=${FUZZMINIMIZETIME:-2s}
status=0
for pkg in $($GO list ./...); do
  dir=$($GO list -f '{{.Dir}}' "$pkg")
  for f in $(grep -ho '^func Fuzz[A-Za-z0-9_]*' "$dir"/*_test.go 2>/dev/null | sed 's/^func //'); do
    echo "fuzz $pkg $f ($FUZZTIME)"
    out=$($GO test -run='^$' -fuzz="^$f\$" -fuzztime="$FUZZTIME" -fuzzminimizetime="$FUZZMINIMIZETIME" "$pkg" 2>&1)
    rc=$?
    echo "$out" | tail -3
    if [ $rc -ne 0 ]; then
      if ! grep -q 'Failing input written' <<<"$out" && grep -q 'context deadline exceeded' <<<"$out"; then
        echo "fuzz $pkg $f: the fuzzing engine ran out of time (no failing input); not a finding"
      else
        echo "$out"
        echo "fuzz $pkg $f: FAILED"
        status=1
      fi
    fi
  done
done
exit $status
