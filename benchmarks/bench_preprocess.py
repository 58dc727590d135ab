"""Extraction's CPU side per example, on the real VCR samples: can 16 cores keep a GPU busy?

Measured on `../shared/fixtures/real/vcr` (the 159 VCR val annotation lines, 143 images named
there, and the one real image of the fixture, decoded as many times as there are images):

- `read`: JSON parsing + word splitting (the VCR reader builds each `Text` from its tokens);
- `decode`: JPEG decode + RGB (`extraction.jobs.load_rgb`) of the real image;
- `transform`: the ViT-B/16 CLIP image transform (resize 224, crop, normalise);
- `bpe`: open_clip's BPE, word by word (`WordTokenizer`, per-process word memo cold, then warm);
- `yake`: YAKE keyword scores + content words per scored text (memo cold: every text new).

Prints each cost per example (an example is one QA or QA->R item; a VCR image serves
`examples / images` of them), the sum, and the projection for a 16-core node: 15 worker
processes (the main process feeds the GPU) x 1 / (CPU seconds per example). Beside it:
clip-retrieval's ~1,100 images/s per A100 for a ViT-B/16 image tower, in examples/s.
    python benchmarks/bench_preprocess.py [--root ../shared/fixtures/real/vcr] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ANNOTATIONS = "annotations/vcr_cs_val_original.jsonl"
WORKERS_16_CORES = 15
CLIP_RETRIEVAL_A100 = 1100


def seconds(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=Path(os.environ.get(
        "MADCACHE_REAL_FIXTURES", REPO.parent / "shared" / "fixtures" / "real")) / "vcr")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    if not (args.root / ANNOTATIONS).is_file():
        result = {"benchmark": "preprocess", "skipped": f"no real VCR samples at {args.root} "
                                                        "(set MADCACHE_REAL_FIXTURES)"}
        print(json.dumps(result))
        return result

    import open_clip
    import torch

    from madcache.data import read_examples
    from madcache.extraction import scores
    from madcache.extraction.jobs import load_rgb
    from madcache.data import wordpieces

    torch.set_num_threads(1)
    examples = read_examples("vcr", args.root, ANNOTATIONS, skip_bad=True).examples
    images = len({e.image_id for e in examples})
    texts = [t for e in examples for t in e.texts]
    image = next(p.relative_to(args.root) for p in (args.root / "vcr1images").rglob("*.jpg"))
    config = open_clip.get_model_config("ViT-B-16")
    preprocess = open_clip.transform.PreprocessCfg(size=config["vision_cfg"]["image_size"])
    transform = open_clip.transform.image_transform_v2(preprocess, is_train=False)
    tokenizer = wordpieces.WordTokenizer(config["text_cfg"]["context_length"])
    decoded = load_rgb(args.root, str(image))

    def bpe_cold():
        wordpieces._word_pieces.cache_clear()
        tokenizer(texts)

    def yake_cold():
        scores._yake_word_scores.cache_clear()
        for text in texts:
            scores.yake_word_scores(text)
            scores.content_words(text)

    total = {
        "read": seconds(lambda: read_examples("vcr", args.root, ANNOTATIONS, skip_bad=True),
                        args.repeats),
        "decode": seconds(lambda: [load_rgb(args.root, str(image)) for _ in range(images)],
                          args.repeats),
        "transform": seconds(lambda: [transform(decoded) for _ in range(images)], args.repeats),
        "bpe_cold": seconds(bpe_cold, args.repeats),
        "bpe_warm": seconds(lambda: tokenizer(texts), args.repeats),
        "yake_cold": seconds(yake_cold, args.repeats),
    }
    n = len(examples)
    per_example_ms = {k: round(1e3 * v / n, 3) for k, v in total.items()}
    cost = sum(v for k, v in per_example_ms.items() if k != "bpe_warm")
    result = {"benchmark": "preprocess", "examples": n, "images": images, "texts": len(texts),
              "image_size": list(decoded.size), "per_example_ms": per_example_ms,
              "cpu_ms_per_example": round(cost, 3),
              "dominant": max((k for k in per_example_ms if k != "bpe_warm"),
                              key=per_example_ms.get),
              "projected_examples_per_s_16_cores": round(WORKERS_16_CORES * 1e3 / cost, 1),
              "clip_retrieval_a100_examples_per_s": round(CLIP_RETRIEVAL_A100 * n / images, 1)}
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
