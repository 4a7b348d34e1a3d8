#!/usr/bin/env bash
# Issue 29: the CPU study at 4x the tokens (2,400 steps of 16 x 128), 4 arms x 3 seeds, then the
# NER probes. Run from the repository root at commit 00d9f6a (the study's code; later commits
# change no number of it), with data/enwiki8k prepared by:
#   python data.py --source ../shared/data/corpus/enwiki/articles.jsonl --out-dir data/enwiki8k --vocab-size 8192
# Re-running the script does only what is missing. Runs and checkpoints go to runs/s29; the small outputs are
# copied here.
set -u
S=runs/s29
R=results/long-study-2026-12-02
U=../shared/data/uner
TXT="--eval-text ../shared/data/corpus/tinystories_sample/tinystories_train_head.txt --eval-text ../shared/data/corpus/multilingual/udhr2_uner_langs/eng.txt --eval-text ../shared/data/corpus/multilingual/udhr2_uner_langs/dan.txt"
# Three passes, as the study ran: train every run, then the head probe on every run, then the
# full fine-tune on item 1's nine runs (seed-major, so that a cut-short pass stays balanced).
for pass in train head full; do
for seed in 1 2 3; do
  for arm in vanilla smlmt pico pico0; do
    n=$arm-s$seed
    if [ $pass = train ]; then
      python study.py --data-dir data/enwiki8k --arms $arm --arm pico0="--meta --task pico --meta-start 0" \
          --seeds $seed --tokens 4915200 --eval-runs 12 --out $S -- --size 11m --device cpu --batch-size 16 \
          --block-size 128 --lr 2e-3 --warmup-steps 30 --save-every 600 --dtype bfloat16 $TXT || exit 1
      mkdir -p $R/$n && cp $S/$n/run.json $R/$n/  # the config; the logs stay in $S (data)
    elif [ $pass = head ]; then  # first sub-token, head lr chosen on dev, at 600, 1,200 and 2,400 steps
      [ -f $S/nerhead_${n}_ckpt_step2400.json ] || python eval_ner.py --uner-dir $U --train da_ddt --mode head \
          --ckpt $S/$n/ckpt_step600.pt $S/$n/ckpt_step1200.pt $S/$n/ckpt_step2400.pt --out $S/nerhead.json || exit 1
      mkdir -p $R/ner && cp $S/nerhead_${n}_*.json $R/ner/
    elif [ $arm != pico0 ]; then  # the paper's protocol: full fine-tuning, 10 epochs, lr 3e-5, at 2,400 steps
      [ -f $S/nerfull_$n.json ] || python eval_ner.py --uner-dir $U --train da_ddt --mode full \
          --head-lr 1e-3 --ckpt $S/$n/ckpt_step2400.pt --out $S/nerfull_$n.json || exit 1
      cp $S/nerfull_$n.json $R/ner/
    fi
  done
done
done
# The reports: all four arms (report.md), and item 1's three (item1/report.md: its equal-LM-steps
# axis reaches 1,600, where pico0's 1,160 LM steps cut the four-arm one short). The committed
# reports were made from copies of the run folders under $R, since removed from the repository as
# data: they name the runs by those paths.
ner() {  # the NER files of arms $1 matching $2 (RUN = ARM-sSEED), '-' where a run has none
  local l=""; for a in $1; do for s in 1 2 3; do f=$R/ner/${2//RUN/$a-s$s}; [ -f $f ] && l="$l,$f" || l="$l,-"; done; done
  echo ${l#,}
}
report() {
  local runs=""; for a in $1; do for s in 1 2 3; do runs="$runs $S/$a-s$s"; done; done
  python compare.py $runs --targets 5.0,4.8,4.7,4.6 --ner head@600=$(ner "$1" nerhead_RUN_ckpt_step600.json) \
      --ner head@1200=$(ner "$1" nerhead_RUN_ckpt_step1200.json) --ner head@2400=$(ner "$1" nerhead_RUN_ckpt_step2400.json) \
      --ner full@2400=$(ner "$1" nerfull_RUN.json) --out $2
}
report "vanilla smlmt pico pico0" $R/report.md
mkdir -p $R/item1 && report "vanilla smlmt pico" $R/item1/report.md
# The mechanism, on smlmt-s1 and vanilla-s1's checkpoints: second moments, and one step's effect
python $R/probe_steps.py $S --step 1800 --trials 6 --out $R/probe1800.json > $R/probe1800.txt
