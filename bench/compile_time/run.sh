#!/usr/bin/env bash
# Compile time of three translation units, measured side by side in one run, each compiled
# `reps` times in turn (interleaved, so machine noise hits all three alike), median reported,
# and as a ratio to the xtensor-only baseline. Same flags as the project's own programs.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
inc=$(cd "$here/../../include" && pwd)
reps=${1:-5}
flags=(-std=c++20 -O2 -march=native -fopenmp -I"$inc" -c -o /dev/null)
declare -A times
for ((i = 0; i < reps; ++i)); do
  for tu in xtensor_only spec_only six_aliases; do
    s=$(date +%s.%N)
    g++ "${flags[@]}" "$here/$tu.cpp"
    times[$tu]+="$(awk -v a="$s" -v b="$(date +%s.%N)" 'BEGIN { print b - a }') "
  done
done
median() { tr ' ' '\n' | grep -v '^$' | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
base=$(echo "${times[xtensor_only]}" | median)
printf "%-14s %8s %8s\n" "TU" "median_s" "ratio"
for tu in xtensor_only spec_only six_aliases; do
  m=$(echo "${times[$tu]}" | median)
  printf "%-14s %8.2f %8.2f\n" "$tu" "$m" "$(awk -v a="$m" -v b="$base" 'BEGIN { print a / b }')"
done
