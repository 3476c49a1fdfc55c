#!/bin/bash
# The study, in the order that makes partial results useful (each step resumes; finished runs are skipped):
# the core rows and the depth-aware row on the three tasks LoRA learns, seeds 0-2; then seeds 3-4 of the
# core rows; then RTE, which no calibrated rate learns (kept out of the average, run last).
set -e
cd "$(dirname "$0")/../../.."
B=bench/results/study/budget.json
python bench/glue_table.py --budget $B --tasks cola mrpc stsb --seeds 0 1 2 --jobs 2 \
    --methods lora dynalora-f dynalora-r dynalora-b dynalora-depth
python bench/glue_table.py --budget $B --tasks cola mrpc stsb --seeds 0 1 2 3 4 --jobs 2 \
    --methods lora dynalora-f dynalora-r dynalora-b
python bench/glue_table.py --budget $B --tasks rte --seeds 0 1 2 3 4 --jobs 2 \
    --methods lora dynalora-f dynalora-r dynalora-b
