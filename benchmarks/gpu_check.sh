#!/usr/bin/env bash
# The prepared one-GPU check (see benchmarks/gpu_check.py). Run from the repository root:
#   bash benchmarks/gpu_check.sh            # GPU: dense-0.5b, bf16, torch.compile, 2048 context
#   bash benchmarks/gpu_check.sh --smoke    # CPU: tiny-dense, under 2 minutes
#   bash benchmarks/gpu_check.sh --sweep    # GPU: micro-batch x train.loss_impl x compile mode, one row each,
#                                           # then graph breaks, the NITP/NTP ratio at the best setting
#   bash benchmarks/gpu_check.sh --sweep --time-budget 420 --write-overlay "$OUT/best-throughput.yaml"
#   bash benchmarks/gpu_check.sh --study --time-budget 480   # the gpu-single study, training only, trimmed
#                                           # (needs runs/data/prose-15m/ prepared: docs/studies.md)
# Needs torch, transformers, numpy, pyyaml, typer, rich, tokenizers, safetensors; no network, no data.
# Writes gpu_check.txt / gpu_check.json under $OUT when it is set.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
PY="${PYTHON:-$(command -v python || command -v python3)}"
OUTDIR="${OUT:-}"
"$PY" -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__, 'cuda', torch.cuda.is_available())"
if [ -n "$OUTDIR" ]; then
  nvidia-smi > "$OUTDIR/nvidia-smi.txt" 2>&1 || true
  "$PY" benchmarks/gpu_check.py --out "$OUTDIR/gpu_check.json" "$@" 2> "$OUTDIR/gpu_check.stderr" | tee "$OUTDIR/gpu_check.txt"
  rc=${PIPESTATUS[0]}
  for m in runs/gpu-check-study/*/metrics.jsonl; do  # --study: each cell's log comes back, not its checkpoints
    if [ -f "$m" ]; then mkdir -p "$OUTDIR/study" && cp "$m" "$OUTDIR/study/$(basename "$(dirname "$m")").metrics.jsonl"; fi
  done
  tail -n 40 "$OUTDIR/gpu_check.stderr" >&2
  exit "$rc"
fi
exec "$PY" benchmarks/gpu_check.py "$@"
