#!/usr/bin/env python3
"""TRL's SFTTrainer on the data `phi bench sft-packing` wrote, for a same-run comparison.

Trains the model folder `--model` (a transformers checkpoint) on `--data` (JSONL records of
`input_ids` and `labels`, -100 where a token is not learned) with TRL's own SFT loop: padded
batches, or `packing=True` (best-fit decreasing, padding-free: position ids restart, the
attention mask is block-diagonal). Prints one JSON line: real tokens/s, learned tokens/s and
peak RSS, timed from TRL's step callbacks after one warm-up step.

Needs torch, transformers, trl and datasets (`pip install torch trl`).
"""

import argparse
import json
import os
import resource
import tempfile
import time


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--model", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--max-length", type=int, required=True)
    p.add_argument("--batch", type=int, required=True)
    p.add_argument("--steps", type=int, required=True)
    p.add_argument("--packing", action="store_true")
    p.add_argument("--threads", type=int, default=0)
    a = p.parse_args()

    import torch
    from datasets import Dataset
    from tokenizers import Tokenizer, models
    from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast, TrainerCallback
    from trl import SFTConfig, SFTTrainer

    if a.threads:
        torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    rows = [json.loads(line) for line in open(a.data)]
    model = AutoModelForCausalLM.from_pretrained(a.model, dtype=torch.float32, attn_implementation="sdpa")
    vocab = model.config.vocab_size
    # The data is token ids already: the tokenizer only names the padding id (0, as ours).
    words = {"<pad>": 0, **{f"t{i}": i for i in range(1, vocab)}}
    tok = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel(words, unk_token="<pad>")), pad_token="<pad>", eos_token="<pad>")
    dataset = Dataset.from_list(rows)

    seen = []  # (tokens, learned) of each batch, in the order the loop draws them

    class Timer(TrainerCallback):
        def __init__(self):
            self.times, self.counts, self.t0 = [], [], None

        def on_step_begin(self, args, state, control, **kw):
            self.t0 = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            self.times.append(time.perf_counter() - self.t0)
            self.counts.append(seen.pop(0))

    config = SFTConfig(
        output_dir=tempfile.mkdtemp(),
        max_steps=a.steps + 1,
        per_device_train_batch_size=a.batch,
        gradient_accumulation_steps=1,
        learning_rate=1e-4,
        lr_scheduler_type="constant",
        max_grad_norm=1.0,
        logging_steps=10**9,
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        bf16=False,
        fp16=False,
        dataloader_num_workers=0,
        max_length=a.max_length,
        packing=a.packing,
        packing_strategy="bfd",
        seed=0,
    )
    trainer = SFTTrainer(model=model, args=config, train_dataset=dataset, processing_class=tok)
    collate = trainer.data_collator

    def counting(examples):
        batch = collate(examples)
        labels = batch["labels"]
        tokens = sum(len(e["input_ids"]) for e in examples)
        seen.append((tokens, int((labels[:, 1:] != -100).sum())))
        return batch

    trainer.data_collator = counting
    timer = Timer()
    trainer.add_callback(timer)
    trainer.train()
    times, counts = timer.times[1:], timer.counts[1:]
    total = sum(times)
    print(json.dumps({
        "workload": "sft_packed" if a.packing else "sft_padded",
        "trl": True,
        "rows_in_dataset": len(trainer.train_dataset),
        "tokens_per_s": sum(c[0] for c in counts) / total,
        "learned_tokens_per_s": sum(c[1] for c in counts) / total,
        "steps": len(times),
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
        "threads": torch.get_num_threads(),
    }))


if __name__ == "__main__":
    main()
