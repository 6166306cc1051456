#!/usr/bin/env bash
# Train on a lent GPU machine and bring the weights back (one command there).
# Prepare here first:  .venv/bin/python -m training.device_bundle --config CONFIG
# Then run this there with var/device carried (device tool: carry ["var/device"]).
# Writes best.safetensors, best.json, checkpoint.json, loss_curve.png and the log to $OUT.
set -euo pipefail
CONFIG="${1:-training/configs/hn-oar-2.0-gpu.yaml}"
OUT="${OUT:-out}"
RUN="${RUN_DIR:-/tmp/contourd-run}"
mkdir -p "$OUT" "$RUN"
python3 -m pip install --quiet --no-index --find-links var/device/wheels pydantic
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
python3 -m training.trainer --config "$CONFIG" --run-dir "$RUN" \
    --cases var/device/cases.npz --device "${DEVICE:-cuda}" 2>&1 \
    | tr '\r' '\n' | grep -v '^train: ' | tee "$OUT/train.log"
for f in best.safetensors best.json checkpoint.json loss_curve.png; do
    [ -f "$RUN/$f" ] && cp "$RUN/$f" "$OUT/"
done
ls -la "$OUT"
