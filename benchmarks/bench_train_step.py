"""Step time of MAD on cached targets vs the baseline, and vs MAD with an online teacher.

All three run side by side in one process on the same batches, interleaved after a warm-up:
- `baseline`: L_task only;
- `mad`: L_task + CW-weighted (L_dv + L_dt + L'_dt) on cached targets (what `madcache train` does);
- `mad-online`: the same loss, but each step first runs a CLIP-style teacher (open_clip, built from
  madcache/teachers/configs/madcache-demo.json, or a small ViT-B-like config) on the batch's
  images and texts, as an online distillation loop would. Only this benchmark imports open_clip.

`--student` picks the student: the built-in `single-stream` (default), or `visualbert` / `vilt`
built from a base-like random checkpoint written with `save_pretrained` to a temporary directory
(hidden 256, 4 layers; VisualBERT reads 36 regions of 64 dims, ViLT 224-px images as its image
processor prepares them), or `uniter`: UNITER-base's shape (hidden 768, 12 layers, bert-base
vocabulary + 81 object tags; `--layers N` for fewer) with random weights saved as a released
`.pt` state dict, 36 regions of 64 dims; or `vl-bert`: VL-BERT-base's VCR model (hidden 768,
12 layers, ResNet-101 on the images with 8 boxes each; `--layers N`, `--scales S L` for the image
sides, default 240 400 on CPU, `--boxes N`) with random weights saved as a released `.model` file.

On CUDA the student's step also runs in bf16 autocast (`--precision bf16`, the default there):
`mad-bf16` / `baseline-bf16` and the fp32 / bf16 speed-up are printed too.

Goal: median(mad) / median(baseline) <= 1.10. Prints a JSON line; runs in well under 2 minutes.
    python benchmarks/bench_train_step.py [--student vilt] [--iters 15] [--batch-size 8]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from madcache.data.records import Example, Text
from madcache.method.losses import Projections
from madcache.method.methods import get_method
from madcache.method.selection import SelectedWords
from madcache.students.base import RegionInputs, StudentOutput, to_device
from madcache.train.config import TrainConfig
from madcache.train.data import BatchTargets, DataSource
from madcache.train.loop import StageLoss
from madcache.train.precision import autocast, configure_matmuls
from madcache.train.setup import Setup
from madcache.train.stream import MicroBatch

REPO = Path(__file__).resolve().parents[1]
DEMO_TEACHER = REPO / "madcache" / "teachers" / "configs" / "madcache-demo.json"
VIT_B_LIKE = {
    "embed_dim": 256,
    "vision_cfg": {"image_size": 96, "layers": 6, "width": 384, "patch_size": 16},
    "text_cfg": {"context_length": 64, "vocab_size": 49408, "width": 256, "heads": 4, "layers": 6},
}
WORDS = "a man holds the red umbrella while two dogs run across wet street near old car".split()


class BenchStudent(nn.Module):
    """A single-stream VL transformer stand-in (regions + word tokens, one sequence per choice),
    used when the built-in student is not importable."""

    task = "multiple_choice"

    def __init__(self, hidden: int = 256, layers: int = 4, region_dim: int = 64) -> None:
        super().__init__()
        self.hidden_size = hidden
        self.tok = nn.Embedding(512, hidden)
        self.reg = nn.Linear(region_dim, hidden)
        self.img = nn.Parameter(torch.zeros(hidden))
        self.cls = nn.Parameter(torch.zeros(hidden))
        layer = nn.TransformerEncoderLayer(hidden, 4, 4 * hidden, dropout=0.1, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers)
        self.head = nn.Linear(hidden, 1)

    def prepare(self, examples, regions):
        texts = [t for ex in examples for t in ex.texts]
        length = max(len(t.words) for t in texts)
        ids = torch.zeros(len(texts), length, dtype=torch.long)
        spans = torch.full((len(texts), length, 2), -1, dtype=torch.long)
        for r, text in enumerate(texts):
            for i, word in enumerate(text.words):
                ids[r, i] = hash(word.text) % 511 + 1
                spans[r, i] = torch.tensor([word.start, word.end])
        return {"ids": ids, "spans": spans, "regions": regions, "C": examples[0].num_choices}

    def forward(self, inputs):
        ids, regions, c = inputs["ids"], inputs["regions"], inputs["C"]
        rows = ids.shape[0]
        visual = self.reg(regions.feat).repeat_interleave(c, dim=0)
        special = torch.stack([self.img, self.cls]).expand(rows, 2, -1)
        x = self.encoder(torch.cat([special, visual, self.tok(ids)], dim=1))
        b = rows // c
        text = x[:, 2 + visual.shape[1] :]
        return StudentOutput(
            logits=self.head(x[:, 1]).view(b, c),
            image_token=x[:, 0].view(b, c, -1),
            cls_token=x[:, 1].view(b, c, -1),
            text_tokens=text.reshape(b, c, *text.shape[1:]),
            token_spans=inputs["spans"].view(b, c, *inputs["spans"].shape[1:]),
        )

    def pretrain_losses(self, inputs, examples, generator):
        raise NotImplementedError


def make_batch(batch: int, rng: np.random.Generator) -> list[Example]:
    out = []
    for i in range(batch):
        choices = tuple(Text.from_string(" ".join(rng.choice(WORDS, 8))) for _ in range(4))
        out.append(
            Example(
                id=f"{i}:qa",
                dataset="vcr",
                split="train",
                image_id=str(i),
                image_path=f"{i}.jpg",
                choices=choices,
                label=int(rng.integers(4)),
                category="activity",
                group=str(i),
                context=Text.from_string(" ".join(rng.choice(WORDS, 6))),
            )
        )
    return out


def cached_targets(
    examples: list[Example], dv: int, dt: int, m: int, rng: np.random.Generator
) -> BatchTargets:
    n, c = len(examples), 4
    span = np.array(
        [[[[w.start, w.end] for w in t.words[:m]] for t in ex.texts] for ex in examples],
        dtype=np.int64,
    )
    words = SelectedWords(
        rng.standard_normal((n, c, m, dt)).astype(np.float32), span, np.ones((n, c, m), dtype=bool)
    )
    return BatchTargets(
        image=torch.randn(n, dv),
        text_eos=torch.randn(n, c, dt),
        word_feat=torch.from_numpy(words.feat),
        word_span=torch.from_numpy(span),
        word_mask=torch.from_numpy(words.mask),
        logits=torch.randn(n, c),
    )


UNITER_BASE = {
    "hidden_size": 768,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "intermediate_size": 3072,
    "hidden_act": "gelu",
    "hidden_dropout_prob": 0.1,
    "attention_probs_dropout_prob": 0.1,
    "max_position_embeddings": 512,
    "type_vocab_size": 2,
    "initializer_range": 0.02,
    "img_dim": 64,
}
VLBERT_BASE = {
    "hidden_size": 768,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "intermediate_size": 3072,
    "max_position_embeddings": 512,
    "type_vocab_size": 3,
    "visual_size": 768,
    "hidden_dropout_prob": 0.1,
    "attention_probs_dropout_prob": 0.1,
    "initializer_range": 0.02,
    "image_num_layers": 101,
}
PRETRAINED = dict(
    vocab_size=30522,
    hidden_size=256,
    num_hidden_layers=4,
    num_attention_heads=4,
    intermediate_size=1024,
)


def build_student(
    name: str, directory: Path, layers: int | None = None, scales: list[int] | None = None
):
    """(student, its visual inputs for a batch) — a pretrained student from a checkpoint saved
    in `directory` as a user's would be."""
    from madcache.students import build_student as build

    if name == "uniter":  # UNITER-base shape, random weights, saved as a released .pt
        from madcache.students.tokens import default_tokenizer_dir, load_tokenizer
        from madcache.students.uniter_model import TIED

        tokenizer = default_tokenizer_dir()
        config = dict(UNITER_BASE, vocab_size=len(load_tokenizer(tokenizer)))
        if layers:
            config["num_hidden_layers"] = layers
        model = build(
            "uniter", model_config=config, tokenizer_dir=str(tokenizer), task="classification"
        )
        state = {k: v for k, v in model.state_dict().items() if not k.startswith("vqa_output.")}
        torch.save({**state, **{k: state[v] for k, v in TIED.items()}}, directory / "uniter.pt")
        return build(
            "uniter",
            checkpoint=str(directory / "uniter.pt"),
            tokenizer_dir=str(tokenizer),
            region_dim=64,
        )

    if name == "vl-bert":  # VL-BERT-base's VCR model, random weights, a released .model
        from madcache.students.tokens import default_tokenizer_dir, load_tokenizer

        tokenizer = default_tokenizer_dir()
        config = dict(VLBERT_BASE, vocab_size=len(load_tokenizer(tokenizer)))
        if layers:
            config["num_hidden_layers"] = layers
        model = build("vl-bert", model_config=config, tokenizer_dir=str(tokenizer))
        state = {
            "module." + k.replace("vlbert.", "vlbert._module.", 1): v
            for k, v in model.state_dict().items()
            if not k.startswith("mlm_head.")
        }
        torch.save({"state_dict": state}, directory / "vl-bert.model")
        return build(
            "vl-bert",
            checkpoint=str(directory / "vl-bert.model"),
            tokenizer_dir=str(tokenizer),
            scales=scales,
        )
    if name == "visualbert":
        from transformers import VisualBertConfig, VisualBertForPreTraining

        VisualBertForPreTraining(
            VisualBertConfig(visual_embedding_dim=64, **PRETRAINED)
        ).save_pretrained(str(directory))
        return build("visualbert", checkpoint=str(directory), region_dim=64)
    if name == "vilt":
        from transformers import ViltConfig, ViltForMaskedLM, ViltImageProcessor

        ViltForMaskedLM(ViltConfig(**PRETRAINED)).save_pretrained(str(directory))
        ViltImageProcessor(size={"shortest_edge": 224}).save_pretrained(str(directory))
        return build("vilt", checkpoint=str(directory))
    try:
        return build("single-stream", region_dim=64)
    except Exception:  # the built-in student may not be installed in this checkout yet
        return BenchStudent()


def visual_inputs(student, batch: int, examples: list[Example] | None = None, boxes: int = 8):
    """What the student reads for a batch: 36 regions per image, or processed random images
    (with `boxes` boxes and their polygons each, for a student that reads the dataset's boxes)."""
    if callable(getattr(student, "pixel_loader", None)):
        return boxed_images(student, examples, boxes)
    if getattr(student, "visual_input", "regions") == "pixels":
        from PIL import Image

        from madcache.students.visual import collate_pixels

        rng = np.random.default_rng(1)
        process = student.image_processor()
        return collate_pixels(
            [
                process(Image.fromarray(rng.integers(0, 255, (240, 320, 3), dtype=np.uint8)))
                for _ in range(batch)
            ]
        )
    return RegionInputs(
        torch.randn(batch, 36, 64),
        torch.rand(batch, 36, 4),
        torch.ones(batch, 36, dtype=torch.bool),
    )


def boxed_images(student, examples: list[Example], count: int):
    """Random 320 x 240 images with `count` VCR-style boxes (metadata json: boxes, polygons)
    each, through the student's own loader."""
    import dataclasses

    from PIL import Image

    rng = np.random.default_rng(1)
    with tempfile.TemporaryDirectory() as directory:
        root, named = Path(directory), []
        for ex in examples:
            Image.fromarray(rng.integers(0, 255, (240, 320, 3), dtype=np.uint8)).save(
                root / f"{ex.image_id}.png"
            )
            corner = rng.uniform(0, 160, (count, 2))
            boxes = np.concatenate([corner, corner + rng.uniform(20, 80, (count, 2))], axis=1)
            meta = {
                "boxes": [[*b.tolist(), 0.9] for b in boxes],
                "names": ["person"] * count,
                "width": 320,
                "height": 240,
                "segms": [[[[b[0], b[1]], [b[2], b[1]], [b[2], b[3]]]] for b in boxes],
            }
            (root / f"{ex.image_id}.json").write_text(json.dumps(meta))
            named.append(
                dataclasses.replace(
                    ex, image_path=f"{ex.image_id}.png", meta_path=f"{ex.image_id}.json"
                )
            )
        return student.pixel_loader(root)(named)


def build_teacher(config: dict, device: str):
    import open_clip

    model = open_clip.CLIP(**config).eval().to(device)
    tokenizer = open_clip.SimpleTokenizer(context_length=config["text_cfg"]["context_length"])
    return model, tokenizer, config


def online_targets(teacher, examples: list[Example], m: int, device: str) -> BatchTargets:
    """What an online loop computes every step: tokenise, run both towers, pool words."""
    model, tokenizer, config = teacher
    size = config["vision_cfg"]["image_size"]
    texts = [t.text for ex in examples for t in ex.texts]
    with torch.no_grad():
        image = model.encode_image(torch.randn(len(examples), 3, size, size, device=device))
        tokens = tokenizer(texts).to(device)
        x = model.token_embedding(tokens) + model.positional_embedding[: tokens.shape[1]]
        x = model.ln_final(
            model.transformer(x, attn_mask=model.attn_mask[: tokens.shape[1], : tokens.shape[1]])
        )
        eos = x[torch.arange(len(texts)), tokens.argmax(-1)] @ model.text_projection
        words = x[:, 1 : 1 + m] @ model.text_projection
    n, c = len(examples), 4
    span = torch.tensor(
        [[[[w.start, w.end] for w in t.words[:m]] for t in ex.texts] for ex in examples],
        dtype=torch.long,
        device=device,
    )
    return BatchTargets(
        image=image,
        text_eos=eos.view(n, c, -1),
        word_feat=words.reshape(n, c, m, -1),
        word_span=span,
        word_mask=torch.ones(n, c, m, dtype=torch.bool, device=device),
        logits=100 * torch.randn(n, c, device=device),
    )


def step_setup(student, method: str, *, dim: int, device: str, regions) -> Setup:
    """The trainer's `Setup` for timing bare steps of `method`: the student, projections to
    teacher width `dim`, no data sources (the benchmark feeds the batches itself)."""
    config = TrainConfig(dataset="vcr", root=".", out="unused", method=method, device=device)
    m = get_method(method)
    return Setup(
        config=config,
        method=m,
        student=student,
        projections=Projections(
            student.hidden_size,
            {"vision": dim, "text": dim, "word": dim if m.distils_words else None},
        ).to(device),
        task_source=DataSource([], [[]], lambda e: None),
        af_source=None,
        regions=lambda e: regions,
        eval_examples=[],
        provenance={},
        save_student=lambda s, p: None,
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--iters", type=int, default=15)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--student",
        default="single-stream",
        choices=["single-stream", "visualbert", "vilt", "uniter", "vl-bert"],
    )
    parser.add_argument(
        "--clock",
        choices=["wall", "cpu"],
        default="wall",
        help="cpu: this process's CPU time (time.process_time), steadier than "
        "wall time on a shared CPU machine; ignored on CUDA",
    )
    parser.add_argument(
        "--layers",
        type=int,
        default=None,
        help="uniter, vl-bert: encoder layers (default 12, the base models)",
    )
    parser.add_argument(
        "--scales",
        type=int,
        nargs=2,
        default=None,
        help="vl-bert: shorter and longest image side (default 240 400 on CPU, "
        "VL-BERT's 600 1200 on CUDA)",
    )
    parser.add_argument(
        "--boxes",
        type=int,
        default=8,
        help="vl-bert: object boxes per image (after the whole-image box)",
    )
    args = parser.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    configure_matmuls(device)
    rng = np.random.default_rng(0)
    teachers = {"mad-online-vitb": build_teacher(VIT_B_LIKE, device)}
    if DEMO_TEACHER.exists():
        teachers["mad-online-demo"] = build_teacher(json.loads(DEMO_TEACHER.read_text()), device)
    dim = 128
    with tempfile.TemporaryDirectory() as directory:
        scales = args.scales or ([600, 1200] if device == "cuda" else [240, 400])
        student = build_student(args.student, Path(directory), args.layers, scales)
    student_name = getattr(student, "name", "bench-stand-in")
    student.to(device)
    batches = [make_batch(args.batch_size, rng) for _ in range(4)]
    regions = visual_inputs(student, args.batch_size, batches[0], args.boxes)
    # the training pipeline tokenises and collates ahead of the step (train/stream.py): not timed
    inputs = [to_device(student.prepare(b, regions), device) for b in batches]
    cached = [to_device(cached_targets(b, dim, dim, 2, rng), device) for b in batches]

    def make(method: str, width: int = dim) -> Setup:
        return step_setup(student, method, dim=width, device=device, regions=regions)

    setups = {
        "baseline": make("baseline"),
        "mad": make("mad"),
        **{name: make("mad", t[2]["embed_dim"]) for name, t in teachers.items()},
    }
    precision = {name: "fp32" for name in setups}
    if device == "cuda":  # the bf16 path (--precision bf16, the default on CUDA)
        setups.update({"baseline-bf16": setups["baseline"], "mad-bf16": setups["mad"]})
        precision.update({"baseline-bf16": "bf16", "mad-bf16": "bf16"})
    params = list(student.parameters()) + [
        p for s in setups.values() for p in s.projections.parameters()
    ]
    optimizer = torch.optim.AdamW(params, lr=1e-5)
    times: dict[str, list[float]] = {name: [] for name in setups}
    names = list(setups)
    losses = {name: StageLoss(setup) for name, setup in setups.items()}
    generator = torch.Generator().manual_seed(0)
    clock = time.process_time if args.clock == "cpu" and device == "cpu" else time.perf_counter
    for it in range(args.warmup + args.iters):
        k = it % len(batches)
        shift = it % len(names)
        for name in names[shift:] + names[:shift]:  # rotate so no method always runs first
            synchronize(device)
            start = clock()
            targets = (
                online_targets(teachers[name], batches[k], 2, device)
                if name in teachers
                else cached[k]
            )
            with autocast(precision[name], device):
                micro = MicroBatch(
                    batches[k], None if name.startswith("baseline") else targets, inputs[k], 1.0
                )
                loss, _ = losses[name](stage="task", micro=micro, generator=generator)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            synchronize(device)
            if it >= args.warmup:
                times[name].append(clock() - start)
    med = {name: statistics.median(v) for name, v in times.items()}
    bf16 = (
        {
            "mad_bf16_over_baseline_bf16": round(med["mad-bf16"] / med["baseline-bf16"], 3),
            "mad_fp32_over_mad_bf16": round(med["mad"] / med["mad-bf16"], 3),
        }
        if device == "cuda"
        else {"bf16": "skipped: no CUDA device"}
    )
    print(
        json.dumps(
            {
                "student": student_name,
                "batch_size": args.batch_size,
                "device": device,
                "clock": "cpu" if clock is time.process_time else "wall",
                "layers": getattr(student, "model_config", {}).get("num_hidden_layers"),
                "median_s": {k: round(v, 5) for k, v in med.items()},
                "mad_over_baseline": round(med["mad"] / med["baseline"], 3),
                **{
                    f"{name}_over_baseline": round(med[name] / med["baseline"], 3)
                    for name in teachers
                },
                **bf16,
                "goal_mad_over_baseline": 1.10,
            }
        )
    )


def synchronize(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


if __name__ == "__main__":
    main()
