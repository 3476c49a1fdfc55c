#!/bin/bash
# The study, in the order that makes partial results useful (each step resumes; finished runs are skipped):
# 1. the core rows and the depth-aware row on the three tasks LoRA learns, seeds 0-2;
# 1b. issue 11's trade-off curve on STS-B: the depth-aware floor at 3/4, 1/2 and 1/4 of the layers, seeds 0-2
#    (bench/tradeoff.py sets them beside LoRA, DynaLoRA-F and the 2/3 row);
# 2. HeteroLoRA's rows where it makes its claim (MRPC, STS-B), seeds 0-2, paired with LoRA's;
# 3. seeds 3-4 of the core rows;
# 4. RTE, which no calibrated rate learns (kept out of the average): core rows seeds 0-4, depth-aware 0-2;
# 5. the learning-rate grids of VeRA, BitFit and FT (seed 0), each task's rate chosen into budget.json by
#    the LoRA calibration's rule (best final dev metric, a tie within 0.5 points to the lower rate); where the
#    chosen rate is the grid's top edge, the grid gets one more doubling on those tasks;
# 6. the remaining rows at three seeds on all four tasks.
# no `set -e`: a step with a failed run (its stdout.log says why) does not hold up the steps after it
cd "$(dirname "$0")/../../.." || exit 1
B=bench/results/study/budget.json
C=bench/results/calibration/budget.json
T="cola mrpc stsb"
S=bench/results/study/runs/step.md  # each step's own report (not committed); report() rebuilds the whole one
# the whole report, every row and seed that finished: bench/results/study/glue_table.md and _forest.png
report() {
    python bench/glue_table.py --budget $B --seeds 0 1 2 3 4 --table-only \
        --methods lora dynalora-f dynalora-b dynalora-pg dynalora-r dynalora-depth dynalora-d75 dynalora-d50 dynalora-d25 \
                  vera dynavera-f bitfit full heterolora-snip heterolora-gn heterolora-dyn heterolora-sc > /dev/null
}
python bench/glue_table.py --budget $B --tasks $T --seeds 0 1 2 --jobs 2 --table $S \
    --methods lora dynalora-f dynalora-r dynalora-b dynalora-depth
report
python bench/glue_table.py --budget $B --tasks stsb --seeds 0 1 2 --jobs 2 --table $S \
    --methods dynalora-d75 dynalora-d50 dynalora-d25
python bench/tradeoff.py --task stsb --seeds 0 1 2
report
python bench/glue_table.py --budget $B --tasks mrpc stsb --seeds 0 1 2 --jobs 2 --table $S \
    --methods lora heterolora-snip heterolora-gn heterolora-dyn heterolora-sc
report
python bench/glue_table.py --budget $B --tasks $T --seeds 0 1 2 3 4 --jobs 2 --table $S \
    --methods lora dynalora-f dynalora-r dynalora-b
report
python bench/glue_table.py --budget $B --tasks rte --seeds 0 1 2 3 4 --jobs 2 --table $S \
    --methods lora dynalora-f dynalora-r dynalora-b
python bench/glue_table.py --budget $B --tasks rte --seeds 0 1 2 --jobs 2 --table $S --methods dynalora-depth
report
python bench/glue_table.py --calibrate --calibrate-method vera --lrs 4e-3 1e-2 2e-2 --tasks rte --budget $C --jobs 2 --choose-into $B
# VeRA's best rate was 2e-2, the grid's top edge, on CoLA, MRPC and STS-B: one more doubling there
python bench/glue_table.py --calibrate --calibrate-method vera --lrs 4e-3 1e-2 2e-2 4e-2 --tasks cola mrpc stsb --budget $C --jobs 2 --choose-into $B
python bench/glue_table.py --calibrate --calibrate-method vera --lrs 4e-3 1e-2 2e-2 4e-2 --budget $C --table-only > /dev/null  # the grid's report, all four tasks
python bench/glue_table.py --calibrate --calibrate-method bitfit --lrs 1e-3 2e-3 4e-3 --tasks cola mrpc rte --budget $C --jobs 2 --choose-into $B
python bench/glue_table.py --calibrate --calibrate-method full --lrs 2e-5 5e-5 1e-4 --tasks cola rte --budget $C --jobs 2 --choose-into $B
# BitFit's best rate was 4e-3, the grid's top edge, on STS-B: one more doubling there (8e-3; the choice comes below)
python bench/glue_table.py --calibrate --calibrate-method bitfit --lrs 8e-3 --tasks stsb --budget $C --jobs 2 > /dev/null
# The best rate was again the grid's top edge for FT on MRPC and STS-B (1e-4) and for BitFit on STS-B (8e-3):
# one more doubling each, one after the other on one core, while VeRA's seed 1 (its rates are chosen) runs on
# the other; then each task's choice from its finished grid
( python bench/glue_table.py --calibrate --calibrate-method full --lrs 2e-4 --tasks mrpc stsb --budget $C --jobs 1 > /dev/null
  python bench/glue_table.py --calibrate --calibrate-method bitfit --lrs 1.6e-2 --tasks stsb --budget $C --jobs 1 > /dev/null ) &
python bench/glue_table.py --budget $B --tasks cola mrpc stsb --seeds 1 --jobs 1 --table $S --methods vera
wait
python bench/glue_table.py --calibrate --calibrate-method full --lrs 2e-5 5e-5 1e-4 2e-4 --tasks mrpc stsb --budget $C --table-only --choose-into $B
python bench/glue_table.py --calibrate --calibrate-method bitfit --lrs 1e-3 2e-3 4e-3 8e-3 1.6e-2 --tasks stsb --budget $C --table-only --choose-into $B
python bench/glue_table.py --calibrate --calibrate-method full --lrs 2e-5 5e-5 1e-4 2e-4 --budget $C --table-only > /dev/null  # the grid's report, all four tasks
python bench/glue_table.py --calibrate --calibrate-method bitfit --lrs 1e-3 2e-3 4e-3 8e-3 1.6e-2 --budget $C --table-only > /dev/null
python bench/glue_table.py --budget $B --seeds 0 1 2 --jobs 2 --table $S --methods vera dynavera-f bitfit full dynalora-pg
report
