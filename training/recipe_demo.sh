#!/usr/bin/env bash
# From nothing to the shipped demo checkpoint and its report, on one machine (written for 2 CPU cores).
#
#   bash training/recipe_demo.sh                 # everything (see the step list below)
#   OUT=runs/demo STEPS2=4000 STEPS3=4000 EVAL=100 VARIANTS="full notrace" bash training/recipe_demo.sh
#
# Steps (each resumes / is skipped when its output exists, so a rerun continues where it stopped):
#  1. collect EPISODES scripted demonstrations of pick_place_plate (both cameras, exact projected traces), the
#     expert slowed to EXPERT_SPEED m per 50 ms step (~95-step episodes instead of ~50): stages 1 and 2 learn
#     the trace and latent vocabulary from them
#  1b. collect NOISY_EPISODES more in which bursts of pushes (ACTION_NOISE m per step) knock the hand off course
#     and the recorded actions are the expert's corrections (DART-style); a quarter of them also execute one
#     grasp miss beside the cube, and the expert re-grasps after misses and pushed cubes (sim/expert.py): stage 3
#     trains the decoder on these, so it sees how to get back from the states its own errors lead to, a missed
#     grasp included (0 = stage 3 on the clean data)
#  2. check the traces: re-project the TCP through meta/cameras.json (annotate_traces --method projection)
#  3. stage 1: latent action tokenizer (trace VQ-VAE, then visual grounding)
#  4. stage 2: VLM synergy training per variant (full: trace + latents; notrace: latents only)
#  5. stage 3 per variant: the flow decoder + its visual stem on the frozen stage-2 VLM's own plans and features
#     (--freeze-vlm: cached once), EMA weights, trace keypoint supervision (--lambda-keypoints: two language-
#     queried stem keypoints learn where the demonstration grasps and places); two variants at a time, one
#     thread each (nolatent reuses the full stage 2; conventional has no stage 2, so its frozen VLM is the
#     untrained initial one). Every variant gets the same decoder, stem, steps and batch.
#  6. evaluate every variant on held-out seeds with the evaluation phrasings of every instruction kind
#  7. report (training/report_demo.py) and, for the full variant, copy the policy to checkpoints/demo
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PY=${PY:-.venv/bin/python}
OUT=${OUT:-runs/demo}
EPISODES=${EPISODES:-300}
EXPERT_SPEED=${EXPERT_SPEED:-0.01}
NOISY_EPISODES=${NOISY_EPISODES:-600}
ACTION_NOISE=${ACTION_NOISE:-0.01}
STEPS1A=${STEPS1A:-1000}
STEPS1B=${STEPS1B:-1500}
STEPS2=${STEPS2:-4000}
STEPS3=${STEPS3:-6000}
BATCH3=${BATCH3:-64}
THREADS3=${THREADS3:-1}            # stage 3 runs two variants at a time, one thread each
LAMBDA_KP=${LAMBDA_KP:-1}          # weight of the trace keypoint loss (0 = off)
ACTION_FRAME=${ACTION_FRAME:-delta}  # decoder rows: the ee_delta actions, or TCP targets (tcp_pose: 0/30 vs 3/30, REPORT)
NOISE=${NOISE:-0}                  # run-time flow noise scale stored in every checkpoint (0: deterministic, REPORT)
# the decoder: a keypoint stem on the 128 px agent view + 96 px wrist camera (model/visual_stem.py), FiLM-
# conditioned on the instruction through the frozen sentence encoder, with 2 language-queried keypoints per
# camera; a 128-wide 3-layer flow decoder, conditioned on the frozen VLM's own plans as at run time, whose
# adaLN also reads the stem's keypoints and the state directly (global_cond)
STEM=${STEM:-'{"image_size": 128, "wrist_size": 96, "channels": 32, "keypoints": 32, "shift_pad": 4, "language": "sentence", "lang_keypoints": 2}'}
DECODER=${DECODER:-'{"d_model": 128, "n_layers": 3, "n_heads": 4, "global_cond": true}'}
EVAL=${EVAL:-100}                  # direct-instruction episodes of the full policy
EVAL_ABL=${EVAL_ABL:-50}           # episodes of every other (variant, kind); the same seeds throughout
VARIANTS=${VARIANTS:-"full notrace nolatent conventional"}
SHIP=${SHIP:-1}
export OMP_NUM_THREADS=1 MUJOCO_GL=${MUJOCO_GL:-egl}
T="--threads 1"
stamp() { date -u +%H:%M:%S; }
log() { echo "[recipe $(stamp)] $*"; }
mkdir -p "$OUT"
SECONDS=0

[ -f "$OUT/data/meta/info.json" ] || { log "1. collecting $EPISODES demonstrations";
  $PY training/collect_demos.py --task pick_place_plate --episodes "$EPISODES" --workers 2 --out "$OUT/data" \
    --image-size 128 --wrist-size 96 --seed 0 --expert-speed "$EXPERT_SPEED"; }
DATA3="$OUT/data"
if [ "$NOISY_EPISODES" -gt 0 ]; then
  DATA3="$OUT/data_noisy"
  [ -f "$DATA3/meta/info.json" ] || { log "1b. collecting $NOISY_EPISODES demonstrations with action noise $ACTION_NOISE";
    $PY training/collect_demos.py --task pick_place_plate --episodes "$NOISY_EPISODES" --workers 2 --out "$DATA3" \
      --image-size 128 --wrist-size 96 --seed 0 --expert-speed "$EXPERT_SPEED" --action-noise "$ACTION_NOISE"; }
fi
log "2. trace check by re-projection"
$PY training/annotate_traces.py --dataset "$OUT/data" --method projection --camera observation.images.agentview \
  --overlay-episodes 2 --resume > "$OUT/annotate.log" 2>&1 || log "   (trace check failed, see $OUT/annotate.log)"

[ -f "$OUT/stage1/tokenizer/config.json" ] || { log "3. stage 1";
  $PY training/stage1_tokenizer.py --dataset "$OUT/data" --config tiny --out "$OUT/stage1" \
    --steps-a "$STEPS1A" --steps-b "$STEPS1B" $T; }
TOK="$OUT/stage1/tokenizer"
IDS="$OUT/stage2_full/latent_ids.safetensors"
IDS3="$IDS"; [ "$DATA3" = "$OUT/data" ] || IDS3="$OUT/data_noisy_latent_ids.safetensors"   # stage-1 labels of stage 3's data

s2() {  # variant, extra args
  [ -f "$OUT/stage2_$1/policy/config.json" ] || $PY training/stage2_vlm.py --dataset "$OUT/data" --latent-tokenizer "$TOK" \
    --config tiny --out "$OUT/stage2_$1" --steps "$STEPS2" $T "${@:2}" > "$OUT/stage2_$1.log" 2>&1
}
s3() {  # variant, args
  [ -f "$OUT/stage3_$1/policy/config.json" ] || $PY training/stage3_e2e.py --dataset "$DATA3" --config tiny \
    --out "$OUT/stage3_$1" --steps "$STEPS3" --batch-size "$BATCH3" --freeze-vlm --ema 0.999 --set "stem=$STEM" \
    --set "decoder=$DECODER" --set "action_frame=$ACTION_FRAME" --set "noise_scale=$NOISE" \
    --lambda-keypoints "$LAMBDA_KP" --threads "$THREADS3" "${@:2}" > "$OUT/stage3_$1.log" 2>&1
}
has() { [[ " $VARIANTS " == *" $1 "* ]]; }

log "4. stage 2 (full, notrace in parallel)"
s2 full &
if has notrace; then (while [ ! -f "$IDS" ]; do sleep 5; done; s2 notrace --no-trace --latent-ids "$IDS") & fi
wait
log "5. stage 3 (two variants at a time, $THREADS3 thread(s) each)"
$PY -c "from semanticvla_core.training.stage2_vlm import ensure_latent_ids as f; f('$IDS3', '$DATA3', '$TOK')"
if has full; then s3 full --init-from "$OUT/stage2_full/policy" --latent-ids "$IDS3" & fi
if has nolatent; then s3 nolatent --init-from "$OUT/stage2_full/policy" --latent-ids "$IDS3" --set use_latent=false & fi
wait
if has notrace; then s3 notrace --init-from "$OUT/stage2_notrace/policy" --latent-ids "$IDS3" & fi
if has conventional; then s3 conventional --latent-tokenizer "$TOK" --latent-ids "$IDS3" --set use_trace=false --set use_latent=false & fi
wait
log "6. evaluation"
ev() {  # variant, direct episodes
  [ -f "$OUT/eval_$1.json" ] || $PY training/evaluate.py --checkpoint "$OUT/stage3_$1/policy" --tasks pick_place_plate \
    --episodes "$EVAL_ABL" --episodes-per-kind "direct=$2" --videos "$OUT/videos_$1" --videos-per-task 2 --out "$OUT/eval_$1.json" > "$OUT/eval_$1.log" 2>&1
}
i=0
for v in $VARIANTS; do
  n=$EVAL_ABL; [ "$v" = full ] && n=$EVAL
  ev "$v" "$n" &
  i=$((i + 1)); [ $((i % 2)) = 0 ] && wait
done
wait
log "7. report"
$PY training/report_demo.py --runs "$OUT" --out "$OUT/report"
if [ "$SHIP" = 1 ] && [ -f "$OUT/stage3_full/policy/config.json" ]; then
  rm -rf checkpoints/demo && mkdir -p checkpoints && cp -r "$OUT/stage3_full/policy" checkpoints/demo
  cp "$OUT/eval_full.json" checkpoints/demo/eval.json 2>/dev/null || true
  log "shipped $OUT/stage3_full/policy -> checkpoints/demo"
fi
log "done in $((SECONDS / 60)) min"
