"""Pretrain the tiny `madcache-demo` CLIP teacher on the demo world's captions, on the CPU.

The recipe is plain CLIP: open_clip's own `CLIP` model (config `madcache-demo`), its `ClipLoss`,
AdamW with linear warm-up and cosine decay, a fixed seed. The corpus is small, so every image is
decoded and preprocessed once into a uint8 tensor (the eval transform up to `Normalize`, which is
applied per batch: identical pixels to what extraction will feed the teacher).

The output is a safetensors state dict that `load_teacher("madcache-demo", checkpoint=PATH)`
loads like any real checkpoint, plus a sidecar `PATH.json` (settings, losses, retrieval
accuracy). Rerunning with the same settings and corpus finds the sidecar and does nothing.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from madcache.core.config import MAX_THREADS, changed_settings, setting
from madcache.core.errors import DataError, DataFileNotFoundError
from madcache.core.io import atomic_write_bytes, file_sha256, write_json
from madcache.train.optim import cosine, descend

MODEL_NAME = "madcache-demo"
CAPTIONS = Path("captions") / "captions.jsonl"
IMAGE_KEYS = ("image", "image_path", "file")
CAPTION_KEYS = ("caption", "text")


@dataclass(frozen=True)
class DemoTeacherConfig:
    """The demo teacher's pretraining (the flags of `madcache demo teacher`)."""

    data: Path = setting(help="Demo world root (holds captions/captions.jsonl and images/).")
    out: Path = setting(
        help="Checkpoint to write (.safetensors); a PATH.json sidecar goes beside it."
    )
    steps: int = setting(300, minimum=1, help="Pretraining steps.")
    batch_size: int = setting(64, minimum=2, help="Captions per contrastive batch.")
    lr: float = setting(1e-3, above=0, help="Peak learning rate (AdamW, cosine decay).")
    weight_decay: float = setting(0.1, minimum=0, help="AdamW weight decay.")
    warmup: int = setting(
        30,
        minimum=0,
        flag="warmup-steps",  # --warmup is a fraction
        help="Warm-up steps (at most a fifth of the steps).",
    )
    seed: int = setting(0, minimum=0, help="Seed of the initialisation and the batches.")
    holdout_every: int = setting(
        10, minimum=2, help="Every Nth image (by name hash) is held out for the retrieval check."
    )
    threads: int = setting(
        1,
        minimum=1,
        maximum=MAX_THREADS,
        help="CPU threads torch may use. Pinned: with more, a loaded machine "
        "changed the last bits.",
    )


@dataclass
class Corpus:
    images: torch.Tensor  # [N_img, 3, H, W] uint8, resized and cropped
    tokens: torch.Tensor  # [N_cap, L] long
    caption_image: torch.Tensor  # [N_cap] row in `images`
    caption_text: torch.Tensor  # [N_cap] id of the caption's distinct token sequence
    image_names: list[str]
    digest: str


def read_captions(root: Path) -> list[tuple[str, str]]:
    """(image path relative to `root`, caption) pairs from `root/captions/captions.jsonl`."""
    from madcache.data.paths import safe_join

    path = root / CAPTIONS
    if not path.is_file():
        raise DataFileNotFoundError(
            "caption corpus not found (generate the demo world with `madcache demo data`)",
            file=path,
        )
    pairs = []
    for line_no, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"invalid JSON: {exc.msg}", file=path, line=line_no) from None
        image = next((record[k] for k in IMAGE_KEYS if k in record), None)
        caption = next((record[k] for k in CAPTION_KEYS if k in record), None)
        if not isinstance(image, str) or not isinstance(caption, str):
            raise DataError(
                f"needs string fields {IMAGE_KEYS[0]!r} and {CAPTION_KEYS[0]!r}",
                file=path,
                line=line_no,
            )
        safe_join(root, image)
        pairs.append((image, caption))
    if not pairs:
        raise DataError("caption corpus is empty", file=path)
    return pairs


def load_corpus(root: Path, model: torch.nn.Module) -> Corpus:
    """Decode every image once (resize + crop, no normalisation) and tokenise every caption."""
    import open_clip
    from open_clip.transform import PreprocessCfg, image_transform_v2
    from PIL import Image

    pairs = read_captions(root)
    names = sorted({image for image, _ in pairs})
    row = {name: i for i, name in enumerate(names)}
    transform = image_transform_v2(
        PreprocessCfg(**open_clip.get_model_preprocess_cfg(model)), is_train=False
    )
    to_unit = transform.transforms[:-1]  # all but Normalize, applied per batch
    images = []
    for name in names:
        with Image.open(root / name) as image:
            x = image.convert("RGB")
            for step in to_unit:
                x = step(x)
        images.append((x * 255).round().to(torch.uint8))
    tokenizer = open_clip.get_tokenizer(MODEL_NAME)
    tokens = tokenizer([caption for _, caption in pairs])
    digest = hashlib.sha256(json.dumps(pairs).encode())
    for name in names:
        digest.update(file_sha256(root / name).encode())
    return Corpus(
        torch.stack(images),
        tokens,
        torch.tensor([row[image] for image, _ in pairs]),
        tokens.unique(dim=0, return_inverse=True)[1],
        names,
        digest.hexdigest(),
    )


def split_holdout(corpus: Corpus, every: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Caption rows for training and held-out evaluation, split by image (stable name hash)."""
    held = torch.tensor(
        [int(hashlib.sha1(n.encode()).hexdigest(), 16) % every == 0 for n in corpus.image_names]
    )
    if held.all() or not held.any():  # tiny corpora: hold out the last image instead
        held = torch.zeros(len(corpus.image_names), dtype=torch.bool)
        held[-1] = len(corpus.image_names) > 1
    mask = held[corpus.caption_image]
    return torch.nonzero(~mask).flatten(), torch.nonzero(mask).flatten()


def normalise_pixels(images: torch.Tensor, model: torch.nn.Module) -> torch.Tensor:
    import open_clip

    cfg = open_clip.get_model_preprocess_cfg(model)
    mean = torch.tensor(cfg["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(cfg["std"]).view(1, 3, 1, 1)
    return (images.float() / 255 - mean) / std


@torch.no_grad()
def retrieval_top1(model: torch.nn.Module, corpus: Corpus, rows: torch.Tensor) -> float:
    """Image -> caption top-1 accuracy (%) over the captions in `rows`. Identical captions are
    one candidate (they cannot be told apart); an image is right when its best candidate is
    one of its own captions."""
    if len(rows) == 0:
        return float("nan")
    was_training = model.training
    model.eval()
    texts, text_of_row = corpus.tokens[rows].unique(dim=0, return_inverse=True)
    img_rows = corpus.caption_image[rows].unique()
    img = model.encode_image(normalise_pixels(corpus.images[img_rows], model), normalize=True)
    best = (img @ model.encode_text(texts, normalize=True).T).argmax(1)
    own = {(int(i), int(t)) for i, t in zip(corpus.caption_image[rows], text_of_row)}
    model.train(was_training)
    hits = [(int(i), int(b)) in own for i, b in zip(img_rows, best)]
    return 100.0 * sum(hits) / len(hits)


def teacher_lr(step: int, cfg: DemoTeacherConfig) -> float:
    """Linear warm-up (at most a fifth of the run), then cosine decay to 0."""
    return cosine(step, cfg.steps, base=cfg.lr, warm=max(1, min(cfg.warmup, cfg.steps // 5)))


def is_demo_teacher(path: Path) -> bool:
    """Whether `path` is a checkpoint this module saved (its safetensors metadata names it)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            return (handle.metadata() or {}).get("model") == MODEL_NAME
    except Exception:  # safetensors raises its own error for other bytes
        return False


def sidecar_path(out: Path) -> Path:
    return out.with_name(out.name + ".json")


def _settings(cfg: DemoTeacherConfig) -> dict[str, Any]:
    settings = asdict(cfg)
    settings.pop("data")
    settings.pop("out")
    return settings


def pretrain_demo_teacher(cfg: DemoTeacherConfig, *, progress: bool = True) -> dict[str, Any]:
    """Train, save `cfg.out` (+ sidecar) and return the sidecar's summary."""
    from open_clip.loss import ClipLoss

    from madcache.teachers.clip import create_model, encode_text_trimmed

    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    model = create_model(MODEL_NAME)
    corpus = load_corpus(Path(cfg.data), model)
    done = _existing(cfg, corpus.digest)
    if done is not None:
        return done
    train_rows, held_rows = split_holdout(corpus, cfg.holdout_every)
    before = retrieval_top1(model, corpus, held_rows)

    loss_fn = ClipLoss()
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    generator = torch.Generator().manual_seed(cfg.seed)
    history, start = [], time.perf_counter()
    model.train()
    for step in _progress(range(cfg.steps), progress):
        batch = _batch(train_rows, corpus, cfg.batch_size, generator)
        pixels = normalise_pixels(corpus.images[corpus.caption_image[batch]], model)
        image_f = model.encode_image(pixels, normalize=True)
        text_f = torch.nn.functional.normalize(
            encode_text_trimmed(model, corpus.tokens[batch]), dim=-1
        )
        loss = loss_fn(image_f, text_f, model.logit_scale.exp())
        descend(optimizer, loss, lr=teacher_lr(step, cfg))
        with torch.no_grad():  # as CLIP: the temperature stays below 100
            model.logit_scale.clamp_(0, math.log(100))
        history.append(round(loss.item(), 5))
    seconds = time.perf_counter() - start

    summary = {
        "status": "complete",
        "model": MODEL_NAME,
        **_settings(cfg),
        "corpus_digest": corpus.digest,
        "n_images": len(corpus.image_names),
        "n_captions": len(corpus.tokens),
        "n_heldout_captions": len(held_rows),
        "final_loss": history[-1] if history else None,
        "loss_history": history,
        "retrieval_top1_before": before,
        "retrieval_top1_after": retrieval_top1(model, corpus, held_rows),
        "seconds": round(seconds, 2),
        "steps_per_s": round(cfg.steps / max(seconds, 1e-9), 2),
    }
    _save(model, Path(cfg.out), summary)
    return summary


def _batch(
    rows: torch.Tensor, corpus: Corpus, size: int, generator: torch.Generator
) -> torch.Tensor:
    """A random batch of caption rows with no image and no caption text twice: ClipLoss treats
    every other pair in the batch as a negative, so a repeat would be a false negative."""
    order = rows[torch.randperm(len(rows), generator=generator)].tolist()
    images, texts = corpus.caption_image.tolist(), corpus.caption_text.tolist()
    seen_images, seen_texts, batch = set(), set(), []
    for row in order:
        if images[row] in seen_images or texts[row] in seen_texts:
            continue
        seen_images.add(images[row])
        seen_texts.add(texts[row])
        batch.append(row)
        if len(batch) == size:
            break
    return torch.tensor(batch)


def _existing(cfg: DemoTeacherConfig, digest: str) -> dict[str, Any] | None:
    """The sidecar of a complete checkpoint made with the same settings and corpus, or None."""
    out, side = Path(cfg.out), sidecar_path(Path(cfg.out))
    if not (out.is_file() and side.is_file()):
        return None
    summary = json.loads(side.read_text())
    same = (
        summary.get("status") == "complete"
        and summary.get("corpus_digest") == digest
        and not changed_settings(summary, _settings(cfg))
        and summary.get("checkpoint_sha256") == file_sha256(out)
    )
    return summary if same else None


def _save(model: torch.nn.Module, out: Path, summary: dict[str, Any]) -> None:
    """Atomic (core/io): the checkpoint, then the sidecar that marks it complete."""
    from safetensors.torch import save

    out.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    atomic_write_bytes(out, save(state, metadata={"model": MODEL_NAME}))
    summary["checkpoint_sha256"] = file_sha256(out)
    write_json(sidecar_path(out), summary)


def _progress(steps: range, enabled: bool):
    if not enabled:
        return steps
    from tqdm import tqdm

    return tqdm(steps, desc="demo teacher", unit="step")
