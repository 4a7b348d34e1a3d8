#!/bin/bash
# The redesign's behaviour check (issue 35): eleven 40-step CPU-recipe runs, one per path, each
# printing its final val loss and val episodes' query loss after the inner loop. Run it from the
# root of a checkout (the commit before the redesign, b176535, and after), with the enwiki bins:
#   python data.py --source ../shared/data/corpus/enwiki/articles.jsonl --out-dir data/enwiki8k --vocab-size 8192
#   bash results/redesign-2026-12-06/check.sh OUTROOT
set -e
R="--data-dir data/enwiki8k --size 11m --device cpu --max-steps 40 --batch-size 16 --block-size 128 --lr 2e-3 --warmup-steps 30 --eval-every 20 --eval-episodes 4 --sample-tokens 8"
mkdir -p "$1"
while IFS='|' read -r name flags; do
  rm -rf "$1/$name"
  python train.py $R $flags --out-dir "$1/$name" > "$1/$name.txt" 2>&1
  echo "$name $(python -c "import json; r = [json.loads(l) for l in open('$1/$name/log.jsonl')][-1]; print(repr(r['val_loss']), r.get('episode_loss_after'))")"
done <<'LIST'
vanilla|
smlmt|--meta
pico|--meta --task pico
lm|--meta --task lm
lm-adamw|--meta --task lm --inner-opt adamw
tarp|--meta --tarp dynamic --inner-rank 4 --inner-params top-2
tams|--meta --tams
reptile|--meta --outer reptile --inner-params top-2
metasgd|--meta --learn-inner-lr
lowrank|--meta --inner-rank 4 --inner-params top-2
accum|--meta --grad-accum 2 --batch-size 8
LIST
