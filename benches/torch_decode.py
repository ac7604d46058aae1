#!/usr/bin/env python3
"""PyTorch side of `phi bench generate --weights ... --torch-decode benches/torch_decode.py`.

Builds the same random model as the bench (HF PhiForCausalLM or Phi3ForCausalLM at the given
shape) directly in --dtype (f32 or bf16, no f32 copy first), then times greedy decoding of
--gen-tokens new tokens after a 32-token prompt, batch 1, KV cache, after a 4-token warm-up.
Prints one JSON line. Peak RSS is reset before the timed decode (Linux clear_refs), as ours is.
"""
import argparse
import json
import resource
import time

import torch

from bench_shape import config_for

p = argparse.ArgumentParser()
p.add_argument("--dtype", choices=["f32", "bf16"], default="f32")
p.add_argument("--arch", choices=["phi", "phi3"], default="phi")
p.add_argument("--hidden", type=int, default=256)
p.add_argument("--layers", type=int, default=4)
p.add_argument("--heads", type=int, default=8)
p.add_argument("--vocab", type=int, default=8192)
p.add_argument("--gen-tokens", type=int, default=64)
# Accepted so the bench can pass its whole shape; decoding does not use them.
p.add_argument("--batch", type=int, default=1)
p.add_argument("--seq", type=int, default=256)
p.add_argument("--steps", type=int, default=5)
a = p.parse_args()

dtype = {"f32": torch.float32, "bf16": torch.bfloat16}[a.dtype]
max_pos = max(2048, a.seq + a.gen_tokens + 8)
config, cls = config_for(a.arch, a.vocab, a.hidden, a.layers, a.heads, max_pos)
torch.manual_seed(0)
torch.set_default_dtype(dtype)
with torch.no_grad():
    model = cls(config).eval()
torch.set_default_dtype(torch.float32)

g = torch.Generator().manual_seed(2)
prompt = torch.randint(0, a.vocab, (1, 32), generator=g)
kw = dict(do_sample=False, pad_token_id=0, use_cache=True)
with torch.no_grad():
    model.generate(prompt, max_new_tokens=4, min_new_tokens=4, **kw)
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass
    # The prompt and the first token alone, then the whole run: the difference is the decode of
    # the tokens after the first (llama-bench's "tg"), where the weights' bytes set the pace.
    t = time.perf_counter()
    model.generate(prompt, max_new_tokens=1, min_new_tokens=1, **kw)
    first = time.perf_counter() - t
    t = time.perf_counter()
    out = model.generate(prompt, max_new_tokens=a.gen_tokens, min_new_tokens=a.gen_tokens, **kw)
    dt = time.perf_counter() - t


def peak_rss_mib():
    try:
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


new = out.shape[1] - prompt.shape[1]
print(json.dumps({"workload": "generate", "dtype": a.dtype, "arch": a.arch, "new_tokens": new, "seconds": dt,
                  "tokens_per_s": new / dt, "first_token_s": first,
                  "decode_tokens_per_s": (new - 1) / (dt - first) if new > 1 and dt > first else None,
                  "peak_rss_mib": peak_rss_mib(), "torch": torch.__version__,
                  "threads": torch.get_num_threads()}))
