#!/usr/bin/env bash
# The exact commands behind benchmarks/results/v3 (resumable: finished runs are skipped; see
# runs.jsonl for every run's argv). 1 CPU thread per run; the project machine's 2 cores were shared
# with other work, so the "seconds" in runs.jsonl are not idle-machine timings.
set -euo pipefail
cd "$(dirname "$0")/../../.."
R=benchmarks/results/v3
PRE=runs/pretrain-supervised
if [ ! -f "$PRE/backbone.safetensors" ]; then
  # supervised source pretraining on a disjoint synthetic world (seed 101, 6 cameras, 300 ids)
  python -m timm_reid.pretrain --method supervised --seed 0 --output "$PRE" --model convnext_atto \
      --height 64 --width 32 --epochs 40 --threads 1 --no-progress
fi
for s in 0 1 2; do   # zero-shot right after patching, per entry
  [ -s "$R/entry-seed$s.jsonl" ] || python benchmarks/entry.py --backbone "$PRE/backbone.safetensors" \
      --data "$R/data-seed$s" --seed "$s" > "$R/entry-seed$s.jsonl"
done
python benchmarks/study_v3.py --init supervised="$PRE/backbone.safetensors" --rows entry --seeds 0 1 2
python benchmarks/study_v3.py --init random --rows recipe --seeds 0
python benchmarks/study_v3.py --init random --rows demo-new --rounds 8 --seeds 0
python benchmarks/study_v3.py --init random --rows demo-v3 --rounds 8 --seeds 0 1   # the adopted demo preset
python benchmarks/study_v3.py --init supervised="$PRE/backbone.safetensors" --rows tnorm --seeds 0
# second session (2026-12-02): ISR initialisation, ICE, random-init entry rows, 8 rounds
ISR=runs/pretrain-isr
if [ ! -f "$ISR/backbone.safetensors" ]; then
  # ISR on synthetic street video (seed 202, no labels), the pretraining benchmark's sizes (CLI defaults)
  python -m timm_reid.pretrain --method isr --seed 0 --output "$ISR" --model convnext_atto \
      --height 64 --width 32 --threads 1 --no-progress
fi
for s in 0 1 2; do
  [ -s "$R/entry-isr-seed$s.jsonl" ] || python benchmarks/entry.py --backbone "$ISR/backbone.safetensors" \
      --data "$R/data-seed$s" --seed "$s" > "$R/entry-isr-seed$s.jsonl"
done
python benchmarks/study_v3.py --init isr="$ISR/backbone.safetensors" --rows entry --seeds 0 1 2
python benchmarks/study_v3.py --method ice --rounds 4 --init supervised="$PRE/backbone.safetensors" --rows entry --seeds 0 1 2
python benchmarks/study_v3.py --method ice --rounds 4 --init isr="$ISR/backbone.safetensors" --rows entry --seeds 0 1 2
# the second model: resnet10t (BatchNorm: AIBN at gate 1 is BatchNorm), supervised source start
PRE_R=runs/pretrain-supervised-resnet10t
if [ ! -f "$PRE_R/backbone.safetensors" ]; then
  python -m timm_reid.pretrain --method supervised --seed 0 --output "$PRE_R" --model resnet10t \
      --height 64 --width 32 --epochs 40 --threads 1 --no-progress
fi
for s in 0 1 2; do
  [ -s "$R/entry-supervised-resnet10t-seed$s.jsonl" ] || python benchmarks/entry.py --backbone "$PRE_R/backbone.safetensors" \
      --data "$R/data-seed$s" --seed "$s" > "$R/entry-supervised-resnet10t-seed$s.jsonl"
done
python benchmarks/study_v3.py --model resnet10t --init supervised="$PRE_R/backbone.safetensors" \
    --rows entry aibn34-replace-cal --seeds 0 1 2
python benchmarks/study_v3.py --init isr="$ISR/backbone.safetensors" --rows aibn34-replace-g1-cal --seeds 0 1 2
python benchmarks/study_v3.py --init supervised="$PRE/backbone.safetensors" --rows aibn34-replace-g1-cal --seeds 0 1 2
python benchmarks/study_v3.py --method ice --rounds 8 --init random --rows demo-preset --seeds 1 2 0   # the ICE demo
python benchmarks/study_v3.py --init random --rows demo-v3 --rounds 8 --seeds 2   # the IICS demo, third seed
python benchmarks/study_v3.py --init isr="$ISR/backbone.safetensors" --rows demo-v3 --rounds 8 --seeds 0 1 2   # = train --init isr
python benchmarks/study_v3.py --init random --rows entry --seeds 0 1 2
# longer schedules of the main rows (blend ahead of plain 3/3 at 4 rounds from ISR)
python benchmarks/study_v3.py --init isr="$ISR/backbone.safetensors" --rows plain aibn34-blend --rounds 8 --seeds 0 1 2
python benchmarks/study_v3.py --init supervised="$PRE/backbone.safetensors" --rows plain aibn34-blend --rounds 8 --seeds 0 1 2
python benchmarks/study_v3.py --init isr="$ISR/backbone.safetensors" --rows plain aibn34-blend --centre 0 --seeds 0 1 2
python benchmarks/study_v3.py --init isr="$ISR/backbone.safetensors" --rows placement --seeds 0 1 2
python benchmarks/study_v3.py --report
