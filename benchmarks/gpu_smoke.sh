#!/usr/bin/env bash
# GPU check (not part of CI): the real CLI on a small phantom cohort with bf16 mixed precision on
# CUDA — align, train-flow, translate --device cuda — then the train-step benchmark on the GPU.
# Usage on a CUDA machine with medm2g installed (or PYTHONPATH=. and the dependencies present):
#   bash benchmarks/gpu_smoke.sh OUTDIR
set -euo pipefail
OUT=${1:-/tmp/medm2g-gpu}
PY=${PYTHON:-python3}
M="$PY -m medm2g_cli.main"
mkdir -p "$OUT"
python3 - <<'PY'
import torch; print("torch", torch.__version__, "cuda", torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")
PY
t0=$(date +%s)
$M data synth --out "$OUT/head" --patients 32 --anatomy head --seed 0 --size 64 --workers 4
$M data synth --out "$OUT/chest" --patients 32 --anatomy chest --seed 0 --size 64 --workers 4
t1=$(date +%s); echo "synth: $((t1-t0)) s"
$M align --data "$OUT/chest" --out "$OUT/b.m2g" --steps 60 --mixed-precision bf16 --json > "$OUT/align.json"
t2=$(date +%s); echo "align bf16: $((t2-t1)) s"
$M train-flow --pair mri-ct --data "$OUT/head" --bundle "$OUT/b.m2g" --steps 200 --mixed-precision bf16 --json > "$OUT/flow.json"
t3=$(date +%s); echo "train-flow mri-ct bf16: $((t3-t2)) s"
$M train-flow --pair xray-report --data "$OUT/chest" --bundle "$OUT/b.m2g" --steps 100 --mixed-precision bf16 --json > "$OUT/flow2.json" || echo "xray-report failed (needs pycocoevalcap for its validation)"
t4=$(date +%s); echo "train-flow xray-report bf16: $((t4-t3)) s"
$M translate "$OUT/head/P0001/mri-t1.nii.gz" --to ct --model "$OUT/b.m2g" --device cuda --samples 4 --batch-size 32 -o "$OUT/ct.nii.gz" --json > "$OUT/translate.json"
t5=$(date +%s); echo "translate cuda (4 samples): $((t5-t4)) s"
$M generate --to report --from "$OUT/chest/P0002/xray.png" --model "$OUT/b.m2g" --device cuda --out "$OUT/gen" --json > "$OUT/generate.json"
$M info "$OUT/b.m2g" --json > "$OUT/info.json"
$PY - "$OUT" <<'PY'
import json, sys, numpy as np, nibabel as nib
out = sys.argv[1]
ct = nib.load(f"{out}/ct.nii.gz"); src = nib.load(f"{out}/head/P0001/mri-t1.nii.gz")
data = np.asarray(ct.dataobj)
print("ct shape", data.shape, "HU range", float(data.min()), float(data.max()), "affine equal", bool(np.allclose(ct.affine, src.affine)))
for name in ("flow.json", "flow2.json"):
    text = open(f"{out}/{name}").read().strip().splitlines()[-1]
    print(name, text[:400])
print("generate:", open(f"{out}/generate.json").read()[:300])
PY
$PY benchmarks/bench_train_step.py --device cuda --batch 32 --steps 30 || true
