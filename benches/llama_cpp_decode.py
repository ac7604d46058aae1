#!/usr/bin/env python3
"""llama.cpp side of `phi bench generate --weights int8,int4 --llama-cpp benches/llama_cpp_decode.py`.

The anchor a CPU user would pick instead of our packed weights is llama.cpp: Q8_0 (int8 weights in
blocks of 32 with an f16 scale: 8.5 bits a weight) against our int8, Q4_0 (4.5 bits) against our
int4. This builds a random HF model of the bench's shape (transformers, seeded as
torch_decode.py), converts it to GGUF with llama.cpp's own convert_hf_to_gguf.py (f32), quantizes
that to --type with llama.cpp's quantizer, and times greedy decoding exactly as the bench times
ours: a 32-token prompt, a 4-token warm-up, the prompt and first token alone, then the whole run
of --gen-tokens; the tokens after the first over the time after it are the decode rate
(llama-bench's "tg"). Batch 1, --threads threads (default: every core, as ours). Prints one
JSON line.

Needs `llama-cpp-python` (pip builds llama.cpp from source, with the instructions this CPU has)
and the `convert_hf_to_gguf.py` of the same llama.cpp: its source package carries it under
vendor/llama.cpp (give --convert, or set LLAMA_CPP_CONVERT). The converted files are kept in
--workdir (one folder per shape), so a second run converts nothing.

--check-model DIR instead converts the HF folder DIR (f32) and prints its greedy token ids for
--prompt-ids: the same model through both decoders, to check the two compute the same thing.
"""
import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

p = argparse.ArgumentParser()
p.add_argument("--type", choices=["f32", "q8_0", "q4_0"], default="q4_0")
p.add_argument("--arch", choices=["phi", "phi3"], default="phi")
p.add_argument("--hidden", type=int, default=256)
p.add_argument("--layers", type=int, default=4)
p.add_argument("--heads", type=int, default=8)
p.add_argument("--vocab", type=int, default=51200)
p.add_argument("--gen-tokens", type=int, default=64)
p.add_argument("--threads", type=int, default=os.cpu_count())
p.add_argument("--convert", default=os.environ.get("LLAMA_CPP_CONVERT"),
               help="llama.cpp's convert_hf_to_gguf.py (in llama-cpp-python's source package, vendor/llama.cpp)")
p.add_argument("--workdir", default="target/llama-cpp-bench")
p.add_argument("--check-model", help="an HF folder: print its greedy ids for --prompt-ids instead of timing")
p.add_argument("--prompt-ids", help="comma-separated prompt ids (with --check-model)")
# Accepted so the bench can pass its whole shape; decoding does not use them.
p.add_argument("--batch", type=int, default=1)
p.add_argument("--seq", type=int, default=256)
p.add_argument("--steps", type=int, default=5)
a = p.parse_args()

import llama_cpp  # noqa: E402  (after argparse, so --help works without it)

REPO = Path(__file__).resolve().parent.parent
GPT2 = REPO / "crates/phi-data/tests/fixtures/tokenizers/gpt2/tokenizer.json"


def fail(msg):
    print(f"llama_cpp_decode.py: {msg}", file=sys.stderr)
    sys.exit(2)


def write_random_model(out: Path):
    """The bench's shape in HF format, with the GPT-2 tokenizer (whose pre-tokenizer llama.cpp's
    converter knows; a vocab above its 50257 tokens is padded by the converter)."""
    import torch
    from bench_shape import config_for

    if a.vocab < 50257:
        fail(f"--vocab {a.vocab}: the GPT-2 tokenizer the converter is given has 50257 tokens; give at least that")
    max_pos = 2048
    config, cls = config_for(a.arch, a.vocab, a.hidden, a.layers, a.heads, max_pos)
    torch.manual_seed(0)
    with torch.no_grad():
        model = cls(config).eval()
    tmp = out.with_name(out.name + ".tmp")
    model.save_pretrained(tmp)
    (tmp / "tokenizer.json").write_bytes(GPT2.read_bytes())
    (tmp / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "GPT2Tokenizer", "model_max_length": max_pos}))
    tmp.rename(out)


def convert(hf: Path, gguf: Path):
    if not a.convert or not Path(a.convert).is_file():
        fail(f"--convert {a.convert!r}: give llama.cpp's convert_hf_to_gguf.py (llama-cpp-python's source package has it in vendor/llama.cpp)")
    env = dict(os.environ)
    # The converter's own gguf-py, beside it, is the one it is written against.
    gguf_py = Path(a.convert).parent / "gguf-py"
    if gguf_py.is_dir():
        env["PYTHONPATH"] = f"{gguf_py}{os.pathsep}{env.get('PYTHONPATH', '')}"
    tmp = gguf.with_name(gguf.name + ".tmp")
    subprocess.run([sys.executable, a.convert, str(hf), "--outtype", "f32", "--outfile", str(tmp)], check=True,
                   env=env, stdout=subprocess.DEVNULL)
    tmp.rename(gguf)


def quantize(src: Path, dst: Path, ftype: int):
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = ftype
    params.nthread = a.threads
    tmp = dst.with_name(dst.name + ".tmp")
    if llama_cpp.llama_model_quantize(str(src).encode(), str(tmp).encode(), params) != 0:
        fail(f"quantizing {src} to {dst.name} failed")
    tmp.rename(dst)


def load(path: Path):
    return llama_cpp.Llama(model_path=str(path), n_ctx=512, n_batch=512, n_threads=a.threads,
                           n_threads_batch=a.threads, verbose=False)


def greedy(llm, prompt, n, times=None):
    """n greedy tokens after prompt, each from the raw logits of the last position."""
    import numpy as np

    llm.reset()
    out = []
    llm.eval(prompt)
    vocab = llm.n_vocab()
    for i in range(n):
        # The context's own logits of the last evaluated position (`Llama.scores` is not filled
        # when logits_all is off).
        logits = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(llm.ctx, -1), shape=(vocab,))
        tok = int(logits.argmax())
        out.append(tok)
        if times is not None and i == 0:
            times.append(time.perf_counter())
        if i + 1 < n:
            llm.eval([tok])
    return out


def peak_rss_mib():
    try:
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


work = Path(a.workdir)
if a.check_model:
    if not a.prompt_ids:
        fail("--check-model needs --prompt-ids")
    src = Path(a.check_model)
    work.mkdir(parents=True, exist_ok=True)
    gguf = work / (src.resolve().name + "-f32.gguf")
    if not gguf.exists():
        convert(src, gguf)
    llm = load(gguf)
    prompt = [int(t) for t in a.prompt_ids.split(",")]
    print(json.dumps({"ids": greedy(llm, prompt, a.gen_tokens)}))
    sys.exit(0)

shape = work / f"{a.arch}-h{a.hidden}-l{a.layers}-a{a.heads}-v{a.vocab}"
shape.mkdir(parents=True, exist_ok=True)
hf = shape / "hf"
f32 = shape / "model-f32.gguf"
if not f32.exists():
    if not hf.exists():
        write_random_model(hf)
    convert(hf, f32)
ftypes = {"q8_0": llama_cpp.LLAMA_FTYPE_MOSTLY_Q8_0, "q4_0": llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_0}
path = f32
if a.type != "f32":
    path = shape / f"model-{a.type}.gguf"
    if not path.exists():
        quantize(f32, path, ftypes[a.type])

llm = load(path)
# The bench's prompt: 32 ids drawn from the vocabulary with a fixed seed.
import random  # noqa: E402

rng = random.Random(2)
prompt = [rng.randrange(a.vocab) for _ in range(32)]
greedy(llm, prompt, 4)
try:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
except OSError:
    pass
t = time.perf_counter()
greedy(llm, prompt, 1)
first = time.perf_counter() - t
t = time.perf_counter()
out = greedy(llm, prompt, a.gen_tokens)
dt = time.perf_counter() - t
new = len(out)
print(json.dumps({"workload": "generate", "type": a.type, "arch": a.arch, "new_tokens": new, "seconds": dt,
                  "tokens_per_s": new / dt, "first_token_s": first,
                  "decode_tokens_per_s": (new - 1) / (dt - first) if new > 1 and dt > first else None,
                  "peak_rss_mib": peak_rss_mib(), "file_bytes": path.stat().st_size,
                  "llama_cpp_python": llama_cpp.__version__, "threads": a.threads}))
