"""Cost of the text codec that pretrained models need: tokenising a batch, and parsing generated answers.

A pretrained model reads its tokenizer's tokens, so each training and evaluation batch is written out in the
reference text format and tokenised in the main process (nfl.tasks.codec.TextCodec). This prints that cost per
batch, to set against a training step.

    python benchmarks/codec.py                         # tiny stand-in tokenizers built as the tests build them
    python benchmarks/codec.py --model gpt2            # a hub model's tokenizer (or a local folder)

The stand-ins are a byte-level BPE tokenizer like GPT-2's (one token a node) and a tokenizer that spells every
character (one or two tokens a node).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.hf_tiny builds the stand-ins

from nfl.tasks import PathStar  # noqa: E402
from nfl.models.hf import HFCausalLM  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", action="append", help="hub name or folder (repeatable); default: stand-ins")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=20)
    args = parser.parse_args()
    task = PathStar(2, 5, 50)
    prefix, target = (torch.from_numpy(a) for a in task.sample(np.random.default_rng(0), args.batch_size))
    models = args.model
    if not models:
        from tests.hf_tiny import gpt2_like, pythia_like

        root = Path(tempfile.mkdtemp())
        models = [str(gpt2_like(root / "bpe")), str(pythia_like(root / "chars"))]
    for model in models:
        codec = HFCausalLM(0, 0, model).codec(task)
        batch = codec.encode(prefix, target)
        start = time.perf_counter()
        for _ in range(args.rounds):
            batch = codec.encode(prefix, target)
        encode = (time.perf_counter() - start) / args.rounds
        answers = batch.target.clamp(min=0)
        start = time.perf_counter()
        for _ in range(args.rounds):
            codec.generated_nodes(answers)
        parse = (time.perf_counter() - start) / args.rounds
        print(
            f"{Path(model).name:>10}: prefix {batch.prefix.shape[1]} tokens, answer {batch.target.shape[1]}; "
            f"encode {args.batch_size} graphs {1e3 * encode:.1f} ms, "
            f"parse {args.batch_size} answers {1e3 * parse:.1f} ms"
        )


if __name__ == "__main__":
    main()
