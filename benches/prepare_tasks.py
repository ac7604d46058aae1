#!/usr/bin/env python3
"""`phi data prepare` at 1, 2 and 4 tasks against datatrove's pipeline on the same files, same run.

Both read the same JSONL shards (a corpus of Python files, one record per file), run MinHash
near-dedup with the same shape (3-word shingles, 32 bands x 4 rows) and tokenize with the same
tokenizer.json; ours also runs its quality filters (a tree-sitter parse per file), exact dedup and
HumanEval decontamination, which datatrove's pipeline here does not (it has no code filters; a
length filter stands in). Each run is timed with its peak resident memory (/usr/bin/time: the
largest process of the run's tree). Prints a table and one JSON line per run.

  python3 benches/prepare_tasks.py --phi target/release/phi --tokenizer TOKENIZER.json \\
      [--corpus DIR (default: this Python's stdlib)] [--shards 16] [--tasks 1,2,4] [--work DIR]

Needs: pip install datatrove (0.10 was measured) for its side; without it, ours alone.
"""
import argparse, json, os, shutil, subprocess, sys, sysconfig, tempfile, textwrap

p = argparse.ArgumentParser()
p.add_argument("--phi", required=True)
p.add_argument("--tokenizer", required=True)
p.add_argument("--corpus", default=sysconfig.get_paths()["stdlib"])
p.add_argument("--shards", type=int, default=16)
p.add_argument("--tasks", default="1,2,4")
p.add_argument("--work", default=None)
p.add_argument("--python", default=sys.executable, help="the Python that has datatrove")
a = p.parse_args()

work = a.work or tempfile.mkdtemp(prefix="prepare-bench-")
data = os.path.join(work, "jsonl")
if not os.path.isdir(data):
    os.makedirs(data)
    files = sorted(os.path.join(r, f) for r, _, fs in os.walk(a.corpus) for f in fs if f.endswith(".py") and "/test" not in r)
    per = (len(files) + a.shards - 1) // a.shards
    for s in range(a.shards):
        with open(os.path.join(data, f"part-{s:03d}.jsonl"), "w") as out:
            for path in files[s * per:(s + 1) * per]:
                try:
                    text = open(path, encoding="utf-8").read()
                except (UnicodeDecodeError, OSError):
                    continue
                out.write(json.dumps({"text": text, "id": path}) + "\n")
shards = sorted(os.path.join(data, f) for f in os.listdir(data))
docs = sum(1 for s in shards for _ in open(s))
mb = sum(os.path.getsize(s) for s in shards) / 1e6


def timed(cmd, env=None):
    """Wall seconds and peak RSS (MB) of cmd and its children."""
    out = subprocess.run(["/usr/bin/time", "-f", "TIME %e %M"] + cmd, capture_output=True, text=True, env=env)
    if out.returncode != 0:
        sys.exit(f"{cmd[:4]}… failed:\n{out.stdout[-2000:]}\n{out.stderr[-2000:]}")
    line = [l for l in out.stderr.splitlines() if l.startswith("TIME ")][-1].split()
    return float(line[1]), float(line[2]) / 1024, out.stdout


DATATROVE = textwrap.dedent("""
    import sys
    from datatrove.executor import LocalPipelineExecutor
    from datatrove.pipeline.readers import JsonlReader
    from datatrove.pipeline.filters import LambdaFilter
    from datatrove.pipeline.dedup import MinhashDedupSignature, MinhashDedupBuckets, MinhashDedupCluster, MinhashDedupFilter
    from datatrove.pipeline.dedup.minhash import MinhashConfig
    from datatrove.pipeline.tokens import DocumentTokenizer
    if __name__ == "__main__":  # the executor's workers import this file
        data, work, tokenizer, tasks = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
        config = MinhashConfig(n_grams=3, num_buckets=32, hashes_per_bucket=4)
        read = lambda: [JsonlReader(data), LambdaFilter(lambda d: 100 <= len(d.text) <= 1_000_000)]
        logs = work + "/logs"
        s1 = LocalPipelineExecutor(pipeline=read() + [MinhashDedupSignature(output_folder=work + "/sigs", config=config)], tasks=tasks, workers=tasks, logging_dir=logs + "/1")
        s2 = LocalPipelineExecutor(pipeline=[MinhashDedupBuckets(input_folder=work + "/sigs", output_folder=work + "/buckets", config=config)], tasks=config.num_buckets, workers=tasks, logging_dir=logs + "/2", depends=s1)
        s3 = LocalPipelineExecutor(pipeline=[MinhashDedupCluster(input_folder=work + "/buckets", output_folder=work + "/remove", config=config)], tasks=1, logging_dir=logs + "/3", depends=s2)
        s4 = LocalPipelineExecutor(pipeline=read() + [MinhashDedupFilter(input_folder=work + "/remove"), DocumentTokenizer(output_folder=work + "/tokens", tokenizer_name_or_path=tokenizer, eos_token="<|endoftext|>")], tasks=tasks, workers=tasks, logging_dir=logs + "/4", depends=s3)
        s4.run()
""")

rows = []
for n in [int(t) for t in a.tasks.split(",")]:
    out = os.path.join(work, f"phi-{n}")
    for d in (out, out + ".tasks", out + ".partial"):
        shutil.rmtree(d, ignore_errors=True)
    cmd = [a.phi, "data", "prepare", "--kind", "python", "--tokenizer", a.tokenizer, "--out", out, "--json"]
    for s in shards:
        cmd += ["--jsonl", s]
    if n > 1:
        cmd += ["--tasks", str(n), "--workers", str(n)]
    wall, peak, stdout = timed(cmd)
    report = json.loads(stdout)
    kept = report["train"]["documents"] + report["validation"]["documents"]
    rows.append({"system": "phi", "tasks": n, "docs": docs, "kept": kept, "seconds": wall, "docs_per_s": docs / wall, "mb_per_s": mb / wall, "peak_mb": peak})

    probe = subprocess.run([a.python, "-c", "import datatrove"], capture_output=True)
    if probe.returncode == 0:
        dt = os.path.join(work, f"datatrove-{n}")
        shutil.rmtree(dt, ignore_errors=True)
        script = os.path.join(work, "datatrove_pipeline.py")
        open(script, "w").write(DATATROVE)
        env = dict(os.environ, PYTHONWARNINGS="ignore")
        wall, peak, _ = timed([a.python, script, data, dt, a.tokenizer, str(n)], env=env)
        rows.append({"system": "datatrove", "tasks": n, "docs": docs, "seconds": wall, "docs_per_s": docs / wall, "mb_per_s": mb / wall, "peak_mb": peak})

print(f"{docs} documents, {mb:.1f} MB in {len(shards)} JSONL shards")
print(f"{'system':<10} {'tasks':>5} {'seconds':>8} {'docs/s':>8} {'MB/s':>6} {'peak MB':>8}")
for r in rows:
    print(f"{r['system']:<10} {r['tasks']:>5} {r['seconds']:>8.1f} {r['docs_per_s']:>8.0f} {r['mb_per_s']:>6.2f} {r['peak_mb']:>8.0f}")
for r in rows:
    print(json.dumps(r))
