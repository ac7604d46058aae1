#!/usr/bin/env python3
"""PyTorch half of scripts/gpu-check (CUDA): the same work as the `gpu_check` example.

train:  HF PhiForCausalLM at the phi-1.5 shape, f32 weights, bf16 autocast, fused AdamW
        (lr 1e-4, betas 0.9/0.95, weight decay 0.1), global-norm clip 1.0, random windows of
        --seq tokens, --batch rows; one warm-up step, then the median of --steps timed steps.
        Eager PyTorch (no torch.compile), transformers' default attention.
decode: greedy decoding of --new-tokens after a --prompt-token prompt with the KV cache, for each
        batch size, f32 and bf16 weights.
One JSON object per line. MFU uses the Rust side's formula: 6·N + 6·L·T·d FLOPs per token.
"""
import argparse
import json
import statistics
import time

import torch
from transformers import PhiConfig, PhiForCausalLM

p = argparse.ArgumentParser()
p.add_argument("what", choices=["train", "decode"])
p.add_argument("--hidden", type=int, default=2048)
p.add_argument("--layers", type=int, default=24)
p.add_argument("--heads", type=int, default=32)
p.add_argument("--vocab", type=int, default=51200)
p.add_argument("--seq", type=int, default=2048)
p.add_argument("--batch", type=int, default=4)
p.add_argument("--steps", type=int, default=5)
p.add_argument("--peak-flops", type=float, default=989e12)
p.add_argument("--decode-batches", default="1,16")
p.add_argument("--prompt", type=int, default=32)
p.add_argument("--new-tokens", type=int, default=64)
a = p.parse_args()

dev = torch.device("cuda")
config = PhiConfig(vocab_size=a.vocab, hidden_size=a.hidden, intermediate_size=4 * a.hidden,
                   num_hidden_layers=a.layers, num_attention_heads=a.heads, partial_rotary_factor=0.5,
                   max_position_embeddings=max(2048, a.seq + a.new_tokens + 8))
torch.manual_seed(0)


def sync_time(fn):
    torch.cuda.synchronize()
    t = time.perf_counter()
    fn()
    torch.cuda.synchronize()
    return time.perf_counter() - t


if a.what == "train":
    model = PhiForCausalLM(config).to(dev).train()
    n = sum(p.numel() for p in model.parameters())
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=0.1, fused=True)
    g = torch.Generator(device="cpu").manual_seed(3)

    def step():
        x = torch.randint(0, a.vocab, (a.batch, a.seq + 1), generator=g).to(dev)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = model(input_ids=x[:, :-1], labels=x[:, :-1]).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    sync_time(step)
    times = [sync_time(step) for _ in range(a.steps)]
    tps = a.batch * a.seq / statistics.median(times)
    flops = 6 * n + 6 * a.layers * a.seq * a.heads * (a.hidden // a.heads)
    print(json.dumps({"check": "train", "params": n, "batch": a.batch, "seq": a.seq, "precision": "bf16-autocast",
                      "tokens_per_s": tps, "mfu": tps * flops / a.peak_flops, "flops_per_token": flops,
                      "max_memory_allocated_mib": torch.cuda.max_memory_allocated() / 2**20, "torch": torch.__version__}))
else:
    for dtype_name, dtype in [("f32", torch.float32), ("bf16", torch.bfloat16)]:
        model = PhiForCausalLM(config).to(device=dev, dtype=dtype).eval()
        for b in [int(s) for s in a.decode_batches.split(",")]:
            prompt = (torch.arange(b * a.prompt) * 7919 + 13) % a.vocab
            prompt = prompt.reshape(b, a.prompt).to(dev)
            kw = dict(do_sample=False, pad_token_id=0, use_cache=True)
            with torch.no_grad():
                model.generate(prompt, max_new_tokens=4, min_new_tokens=4, **kw)
                secs = sync_time(lambda: model.generate(prompt, max_new_tokens=a.new_tokens, min_new_tokens=a.new_tokens, **kw))
            print(json.dumps({"check": "decode", "dtype": dtype_name, "batch": b, "prompt": a.prompt, "new_tokens": a.new_tokens,
                              "seconds": secs, "tokens_per_s": b * a.new_tokens / secs}))
        del model
        torch.cuda.empty_cache()
