#!/usr/bin/env bash
# Issue 37: does meta-pretraining make a model learn a new text faster afterwards, and does it
# help zero-shot cross-lingual NER? Run from the repository root, with data/enwiki8k prepared by
#   python data.py --source ../shared/data/corpus/enwiki/articles.jsonl --out-dir data/enwiki8k --vocab-size 8192
# Re-running does only what is missing: runs and probes go to runs/s37, the small outputs here.
#   train   4 arms x 3 seeds of the long study's recipe: 11m, 2,400 steps of 16 x 128 (4,915,200
#           tokens), meta steps from 1,200, bfloat16 on the CPU. Seed-major, so a cut-short pass stays balanced
#   adapt   tools/adapt.py on every final checkpoint, three texts the runs never saw, three budgets each
#   ner     eval_ner.py trained on en_ewt, scored on every UNER test set (tl_trg apart): the head
#           probe on every run, full fine-tuning on vanilla and smlmt
#   control vanilla's step-1,200 checkpoints through the same probes (control.py: the drop against the start)
#   report  tools/compare.py over the 12 runs, with the adaptation and NER files
set -u
S=runs/s37
R=results/adapt-study-2026-12-06
U=../shared/data/uner
ARMS="vanilla smlmt smlmt-sep pico"
TS=../shared/data/corpus/tinystories_sample/tinystories_train_head.txt  # 45,592 tokens
SH=corpus/tinyshakespeare.txt.gz                                        # 301,829 tokens
UD=../shared/data/corpus/multilingual/udhr2_uner_langs/eng.txt          # 2,207 tokens
mkdir -p $R/adapt $R/ner
python -m tools.study --data-dir data/enwiki8k --arms vanilla,smlmt,smlmt-sep,pico \
    --arm smlmt-sep="--meta --meta-moments separate" --seeds 1,2,3 --tokens 4915200 --eval-runs 6 \
    --out $S -- --size 11m --device cpu --batch-size 16 --block-size 128 --lr 2e-3 --warmup-steps 30 \
    --save-every 1200 --dtype bfloat16 || exit 1
for s in 1 2 3; do for a in $ARMS; do mkdir -p $R/$a-s$s && cp $S/$a-s$s/run.json $R/$a-s$s/; done; done
cp $S/report.md $R/pretraining.md  # tools/study.py's report: the pretraining runs alone

probe() {  # probe LABEL TEXT FLAGS...: one adaptation file per run
  local label=$1 text=$2; shift 2
  for s in 1 2 3; do for a in $ARMS; do
    f=$R/adapt/${label}_$a-s$s.json
    [ -f $f ] || python -m tools.adapt --ckpt $S/$a-s$s/ckpt_step2400.pt --text $text --out $f "$@" || exit 1
  done; done
}
# Budgets from few-shot to more, each text's largest that fits with its dev and held-out parts;
# 64 steps of 8 x 128 tokens (one pass over a 64k budget). The lr grid: on vanilla-s1's checkpoint,
# a grid of 1e-4..3e-3 chose its lowest, 1e-4, for UDHR's 256 and 1,024 and TinyStories' 4,096
# tokens (1e-3 for 32,768) and never 3e-3; so 3e-5..1e-3
LRS="--lrs 3e-5,1e-4,3e-4,1e-3"
probe udhr $UD --budgets 256,512,1024 --dev-tokens 384 --heldout-tokens 768 $LRS
probe tinystories $TS --budgets 4096,12288,32768 --dev-tokens 4096 --heldout-tokens 8192 $LRS
probe shakespeare $SH --budgets 4096,16384,65536 --dev-tokens 8192 --heldout-tokens 16384 $LRS

for s in 1 2 3; do for a in $ARMS; do  # the head probe (frozen backbone, 10 epochs, head lr on dev)
  f=$R/ner/head_$a-s$s.json
  [ -f $f ] || python eval_ner.py --uner-dir $U --train en_ewt --mode head --ckpt $S/$a-s$s/ckpt_step2400.pt \
      --out $f || exit 1
done; done
for s in 1 2 3; do for a in vanilla smlmt; do  # full fine-tuning at the paper's lr, 1 epoch (CPU time)
  f=$R/ner/full_$a-s$s.json
  [ -f $f ] || python eval_ner.py --uner-dir $U --train en_ewt --mode full --epochs 1 --head-lr 1e-3 \
      --ckpt $S/$a-s$s/ckpt_step2400.pt --out $f || exit 1
done; done

# The control (control.py): does a meta arm drop more only because it starts higher? Vanilla's
# step-1,200 checkpoints start higher still; with the step-2,400 ones they give vanilla's drop as a
# line in the start loss (UDHR and TinyStories: the session had no time for Shakespeare)
control() {  # control LABEL TEXT FLAGS...: as probe, on vanilla's step-1,200 checkpoint
  local label=$1 text=$2; shift 2
  for s in 1 2 3; do
    f=$R/adapt/${label}_vanilla1200-s$s.json
    [ -f $f ] || python -m tools.adapt --ckpt $S/vanilla-s$s/ckpt_step1200.pt --text $text --out $f "$@" || exit 1
  done
}
control udhr $UD --budgets 256,512,1024 --dev-tokens 384 --heldout-tokens 768 $LRS
control tinystories $TS --budgets 4096,12288,32768 --dev-tokens 4096 --heldout-tokens 8192 $LRS
python $R/control.py > $R/control.md

files() {  # files DIR PREFIX: one per run in the report's order, '-' where a run has none
  local l=""; for a in $ARMS; do for s in 1 2 3; do f=$R/$1/$2_$a-s$s.json; [ -f $f ] && l="$l,$f" || l="$l,-"; done; done
  echo ${l#,}
}
runs=""; for a in $ARMS; do for s in 1 2 3; do runs="$runs $S/$a-s$s"; done; done
python -m tools.compare $runs --targets 5.0,4.8,4.7,4.6 --adapt udhr=$(files adapt udhr) \
    --adapt tinystories=$(files adapt tinystories) --adapt shakespeare=$(files adapt shakespeare) \
    --ner head=$(files ner head) --ner full=$(files ner full) --out $R/report.md
