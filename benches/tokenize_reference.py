"""Reference for the tokenize stage of `phi data prepare`: HF `tokenizers` (Python) batch-encodes
the same kept documents with the same tokenizer.json, and the token counts must agree.

    phi data prepare --input "$STDLIB" ... --keep-documents --out DIR
    python benches/tokenize_reference.py DIR

Prints one JSON line: documents, MB, tokens, seconds, MB/s (pip install tokenizers).
"""
import json
import os
import sys
import time

from tokenizers import Tokenizer

os.environ.setdefault("TOKENIZERS_PARALLELISM", "true")
d = sys.argv[1]
docs = [json.loads(line)["text"] for line in open(os.path.join(d, "documents.jsonl"), encoding="utf-8")]
tok = Tokenizer.from_file(os.path.join(d, "tokenizer.json"))
mb = sum(len(t.encode("utf-8")) for t in docs) / 1e6
t0 = time.perf_counter()
enc = tok.encode_batch(docs, add_special_tokens=False)
secs = time.perf_counter() - t0
tokens = sum(len(e.ids) for e in enc)
manifest = json.load(open(os.path.join(d, "manifest.json")))
ours = sum(s["tokens"] - s["documents"] for s in manifest["splits"].values())  # minus one EOS per document
print(json.dumps({"documents": len(docs), "mb": round(mb, 3), "tokens": tokens, "seconds": round(secs, 3),
                  "mb_per_s": round(mb / secs, 2), "phi_tokens": ours, "same_token_count": ours == tokens,
                  "phi_tokenize_seconds": round(manifest["report"]["tokenize_seconds"], 3)}))
