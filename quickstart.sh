#!/usr/bin/env bash
# The main job, end to end on the embedded default (no downloads, 2 CPU cores):
# train a tiny teacher, distill it into a 4-step student, and sample every task.
#   bash quickstart.sh [OUT_DIR]
set -euo pipefail
cd "$(dirname "$0")"
OUT=${1:-out/quickstart}
CONFIG=configs/tiny.py

echo "== 1/4 teacher: rectified flow on the embedded dataset"
python3 train.py --config "$CONFIG" --workdir "$OUT/teacher"
echo "== 2/4 student: DMD + GAN distillation of the teacher"
python3 distill.py --config "$CONFIG" --teacher "$OUT/teacher/export" --workdir "$OUT/student"
echo "== 3/4 inputs for every task (held-out clip, its video, a frame, prompts)"
python3 data/make_demo_inputs.py --config "$CONFIG" --out "$OUT/inputs"
echo "== 4/4 samples: student, 4 steps"
python3 sample.py --checkpoint "$OUT/student/export" --batch_file "$OUT/inputs/tasks.jsonl" \
    --out "$OUT/samples"
echo
echo "teacher loss curve: $OUT/teacher/loss_curve.png"
echo "student checkpoint: $OUT/student/export"
echo "samples (wav, mp4, png spectrograms, json): $OUT/samples  (task names: $OUT/inputs/tasks.txt)"
