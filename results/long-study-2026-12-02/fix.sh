#!/usr/bin/env bash
# The fix the mechanism suggests: meta steps with AdamW moments of their own (--meta-moments
# separate), SMLMT and pico, 3 seeds each, the study's recipe. Run from the repository root at
# commit 65bd694 or later, after run.sh (its data/enwiki8k and, for the report, its run folders).
set -u
S=runs/s29
R=results/long-study-2026-12-02
TXT="--eval-text ../shared/data/corpus/tinystories_sample/tinystories_train_head.txt --eval-text ../shared/data/corpus/multilingual/udhr2_uner_langs/eng.txt --eval-text ../shared/data/corpus/multilingual/udhr2_uner_langs/dan.txt"
for arm in smlmt-sep pico-sep; do
  python study.py --data-dir data/enwiki8k --arms $arm --arm smlmt-sep="--meta --meta-moments separate" \
      --arm pico-sep="--meta --task pico --meta-moments separate" --seeds 1,2,3 --tokens 4915200 --eval-runs 12 \
      --out $S -- --size 11m --device cpu --batch-size 16 --block-size 128 --lr 2e-3 --warmup-steps 30 \
      --save-every 600 --dtype bfloat16 $TXT || exit 1
  for s in 1 2 3; do mkdir -p $R/$arm-s$s && cp $S/$arm-s$s/run.json $R/$arm-s$s/; done
done
# each kind of step's own second moments, per tensor (the mechanism, measured directly)
python $R/meta_moments.py $S/smlmt-sep-s1/ckpt_step1800.pt $S/smlmt-sep-s1/ckpt_step2400.pt \
    --out $R/meta_moments.json > $R/meta_moments.txt
runs=""; for a in vanilla smlmt smlmt-sep pico pico-sep; do for s in 1 2 3; do runs="$runs $S/$a-s$s"; done; done
python compare.py $runs --targets 5.0,4.8,4.7,4.6 --out $R/fix/report.md
