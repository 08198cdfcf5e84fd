#!/usr/bin/env bash
# One GPU session of benchmarks/gpu_suite.py (ours) and benchmarks/official_reference.py (the
# official code), the most important stage first, each in its own process (JAX and PyTorch
# never share the GPU), all under one deadline; rows land in OUT/ours.json, OUT/official.json
# as they are measured and OUT/table.md is the merged table.
#
#   bash benchmarks/gpu_suite.sh OUT DEADLINE_S [STAGE ...]
#
# Stages (default: all, in this order): ours_t2a official_t2a ours_inference
# official_inference ours_ablations ours_train ours_distill. Extra arguments for every suite
# process: SUITE_ARGS (e.g. "--size micro --runs 2"); for the official runner: OFFICIAL_ARGS.
set -uo pipefail
out=${1:?usage: gpu_suite.sh OUT DEADLINE_S [STAGE ...]}
deadline=$(( $(date +%s) + ${2:?deadline in seconds} ))
shift 2
stages=${*:-ours_t2a official_t2a ours_inference official_inference ours_ablations ours_train ours_distill}
export PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.92}
suite="python3 -m benchmarks.gpu_suite --out $out --cache_dir .jax_cache ${SUITE_ARGS:-}"
official="python3 -m benchmarks.official_reference --out $out ${OFFICIAL_ARGS:-}"

run() {  # run CAP_S CMD...: at most CAP_S seconds, and never past the deadline (10 s spare)
  local cap=$1 left=$(( deadline - $(date +%s) - 10 )); shift
  (( left < cap )) && cap=$left
  if (( cap < 20 )); then echo "## skipped (deadline): $*"; return; fi
  echo "## $(date +%T) [${cap} s] $*"
  timeout -k 5 "$cap" "$@" --budget_s $(( cap - 15 )) || echo "## exit $? from: $*"
}

for stage in $stages; do
  case $stage in
    ours_t2a) run 200 $suite --sections t2a ;;
    official_t2a) run 100 $official --sections t2a ;;
    ours_inference) run 200 $suite --sections throughput,teacher,v2a ;;
    official_inference)
      run 90 $official --sections teacher,v2a
      run 60 $official --sections throughput --batches 32 --precisions bf16,fp32 --runs 10 \
          --warmup 1 ;;
    ours_ablations) run 300 $suite --sections ablations ;;
    ours_train) run 300 $suite --sections train ;;
    ours_distill) run 400 $suite --sections distill ;;
    *) echo "unknown stage $stage"; exit 2 ;;
  esac
done
python3 -m benchmarks.gpu_suite --report "$out" | tee "$out/table.md"
