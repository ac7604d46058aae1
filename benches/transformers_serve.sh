#!/usr/bin/env bash
# HuggingFace `transformers serve` with continuous batching on the CPU, in the foreground: the
# server `phi bench serve --endpoint` compares ours with (BENCHMARKS.md, "`phi serve` against
# `transformers serve`").
#
#   benches/transformers_serve.sh MODEL_DIR float32|bfloat16 PORT
#   phi bench serve --endpoint http://127.0.0.1:PORT/v1 --served-model MODEL_DIR --clients 1,4,16,64 ...
#
# Needs a Python with torch, transformers (5.25 here) and its serving extras (fastapi, uvicorn,
# openai); set PYTHON_BIN to its bin/ folder (default: the PATH's). Behaviour of transformers 5.25
# that the comparison has to allow for, read from its source and checked by hand:
# - continuous batching decides once, at start, whether to sample: from `do_sample` in the
#   folder's generation_config.json, not from the request's temperature (give the folder
#   `"do_sample": true` to compare with our sampled replies);
# - the request's `model` must be the folder path as given here;
# - its KV cache takes 60% of the machine's memory unless capped: 512 blocks of 256 tokens here;
# - on the CPU its attention is sdpa (flash kernels are CUDA-only); torch gets 2 threads, the
#   cores of the machine the figures come from (THREADS overrides).
set -euo pipefail
model=${1:?usage: transformers_serve.sh MODEL_DIR float32|bfloat16 PORT}
dtype=${2:?usage: transformers_serve.sh MODEL_DIR float32|bfloat16 PORT}
port=${3:?usage: transformers_serve.sh MODEL_DIR float32|bfloat16 PORT}
case "$dtype" in float32 | bfloat16) ;; *) echo "error: dtype must be float32 or bfloat16, got '$dtype'" >&2; exit 2 ;; esac
[ -f "$model/config.json" ] || { echo "error: $model/config.json: not a model folder" >&2; exit 2; }
bin=${PYTHON_BIN:+$PYTHON_BIN/}
threads=${THREADS:-2}
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1 TOKENIZERS_PARALLELISM=false
export OMP_NUM_THREADS=$threads MKL_NUM_THREADS=$threads
exec "${bin}transformers" serve "$model" --continuous-batching --device cpu --dtype "$dtype" \
    --attn-implementation sdpa --cb-num-blocks "${CB_NUM_BLOCKS:-512}" --host 127.0.0.1 --port "$port"
