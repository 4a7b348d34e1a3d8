#!/usr/bin/env bash
# Issue 29: the CPU study at 4x the tokens (2,400 steps of 16 x 128), 4 arms x 3 seeds, then the
# NER probes. Run from the repository root at commit 00d9f6a (the study's code; later commits
# change no number of it), with data/enwiki8k prepared by:
#   python data.py --source ../shared/data/corpus/enwiki/articles.jsonl --out-dir data/enwiki8k --vocab-size 8192
# First every run is trained (seed-major), then each run gets its NER probes; re-running the
# script does only what is missing. Runs and checkpoints go to runs/s29; the small outputs are
# copied here.
set -u
S=runs/s29
R=results/long-study-2026-12-02
U=../shared/data/uner
TXT="--eval-text ../shared/data/corpus/tinystories_sample/tinystories_train_head.txt --eval-text ../shared/data/corpus/multilingual/udhr2_uner_langs/eng.txt --eval-text ../shared/data/corpus/multilingual/udhr2_uner_langs/dan.txt"
for pass in train all; do
for seed in 1 2 3; do
  for arm in vanilla smlmt pico pico0; do
    n=$arm-s$seed
    python study.py --data-dir data/enwiki8k --arms $arm --arm pico0="--meta --task pico --meta-start 0" \
        --seeds $seed --tokens 4915200 --eval-runs 12 --out $S -- --size 11m --device cpu --batch-size 16 \
        --block-size 128 --lr 2e-3 --warmup-steps 30 --save-every 600 --dtype bfloat16 $TXT || exit 1
    mkdir -p $R/$n && cp $S/$n/log.jsonl $S/$n/dynamics.jsonl $S/$n/run.json $R/$n/
    [ $pass = train ] && continue
    # the head probe (first sub-token, head lr chosen on dev) at 600, 1,200 and 2,400 steps
    [ -f $S/nerhead_${n}_ckpt_step2400.json ] || python eval_ner.py --uner-dir $U --train da_ddt --mode head \
        --ckpt $S/$n/ckpt_step600.pt $S/$n/ckpt_step1200.pt $S/$n/ckpt_step2400.pt --out $S/nerhead.json || exit 1
    # the paper's protocol: full fine-tuning, 10 epochs, lr 3e-5 (one head lr), at 2,400 steps; item 1's arms
    [ $arm = pico0 ] || [ -f $S/nerfull_$n.json ] || python eval_ner.py --uner-dir $U --train da_ddt --mode full \
        --head-lr 1e-3 --ckpt $S/$n/ckpt_step2400.pt --out $S/nerfull_$n.json || exit 1
    mkdir -p $R/ner && cp $S/nerhead_${n}_*.json $R/ner/ && { [ $arm = pico0 ] || cp $S/nerfull_$n.json $R/ner/; }
  done
done
done
