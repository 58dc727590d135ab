"""VL-BERT's VCR input, built as its `vcr/data/datasets/vcr.py`, `vcr/data/transforms/` and
`ResNetVLBERT.prepare_text_from_qa` build it, from madcache's `Example`s.

Text (bert-base-uncased WordPiece), each token grounded to a box by its tag:

    Q->A:   [CLS] question [SEP] answer_c [SEP]
    QA->R:  [CLS] question answer [SEP] rationale_c [SEP]
    types    0    0 ...           0     1 ...       1       tags: box index (0 = whole image)

An object reference ("person1") becomes its name's tokens, tagged with its box (index + 1: box 0
is the whole image, ADD_IMAGE_AS_A_BOX); a person is named from VL-BERT's gender-neutral names,
`NAMES[index % 13]` (VL-BERT cycles a counter across the dataset, so its names depend on
reading order; madcache's are fixed per object); several references are joined by "and" (tag 0).
Every other token is tagged 0. Texts are cut to `seq_len` (64) tokens by VL-BERT's rule.

Image: shorter side SCALES[0] (600), longer at most SCALES[1] (1200), BGR x 255 minus
PIXEL_MEANS, zero-padded to SCALES (FixPadding); boxes: the whole image, then the metadata's
boxes in object order, scaled and clamped; each box's 14x14 instance mask from its polygons
(skimage.draw.polygon, as common/utils/mask.py: the `vlbert` extra).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from madcache.core.errors import ConfigError
from madcache.data.records import Example, Text, Word
from madcache.students.tokens import TOKENIZER_LOCK
from madcache.students.uniter_vcr import question_words

NAMES = (
    "Casey",
    "Riley",
    "Jessie",
    "Jackie",
    "Avery",
    "Jaime",
    "Peyton",
    "Kerry",
    "Jody",
    "Kendall",
    "Frankie",
    "Pat",
    "Quinn",
)  # vcr.py GENDER_NEUTRAL_NAMES
CATEGORIES = (
    "__background__ person bicycle car motorcycle airplane bus train truck boat trafficlight "
    "firehydrant stopsign parkingmeter bench bird cat dog horse sheep cow elephant bear zebra "
    "giraffe backpack umbrella handbag tie suitcase frisbee skis snowboard sportsball kite "
    "baseballbat baseballglove skateboard surfboard tennisracket bottle wineglass cup fork knife "
    "spoon bowl banana apple sandwich orange broccoli carrot hotdog pizza donut cake chair couch "
    "pottedplant bed diningtable toilet tv laptop mouse remote keyboard cellphone microwave oven "
    "toaster sink refrigerator book clock vase scissors teddybear hairdrier toothbrush"
).split()
MASK_SIZE = 14
Row = tuple[int, int, int, int]  # (id, tag, char start, char end)


@dataclass
class VlBertTokens:
    """One example's sequences: per choice `ids`, `types`, `tags` [L_c] and `spans` [L_c, 2]."""

    image_id: str
    ids: list[np.ndarray]
    types: list[np.ndarray]
    tags: list[np.ndarray]
    spans: list[np.ndarray]


class VlBertTextEncoder:
    def __init__(self, tokenizer, *, seq_len: int = 64) -> None:
        self.tokenizer, self.seq_len = tokenizer, seq_len

    def _pieces(self, words: Sequence[str]) -> list[list[tuple[int, int, int]]]:
        if not words:
            return []
        with TOKENIZER_LOCK:
            enc = self.tokenizer(list(words), add_special_tokens=False, return_offsets_mapping=True)
        return [
            list(zip(i, (a for a, _ in o), (b for _, b in o)))
            for i, o in zip(enc["input_ids"], enc["offset_mapping"])
        ]

    def words(self, text: Text, words: Sequence[Word], objects: Sequence[str]) -> list[Row]:
        """`retokenize_and_convert_to_ids_with_tag` on madcache's words of `text`."""
        shown = [self._shown(w, k, words, objects) for k, w in enumerate(words)]
        rows: list[Row] = []
        for word, (_, tag), piece in zip(words, shown, self._pieces([s for s, _ in shown])):
            if tag is None:  # an ordinary word: tag 0, its sub-tokens' own offsets
                rows += [(i, 0, word.start + a, word.start + b) for i, a, b in piece]
            else:  # a name (or "and") standing for the word: the word's span
                rows += [(i, tag, word.start, word.end) for i, _, _ in piece]
        return rows

    @staticmethod
    def _shown(
        word: Word, k: int, words: Sequence[Word], objects: Sequence[str]
    ) -> tuple[str, int | None]:
        """What VL-BERT tokenises for a word, and its tag (None: an ordinary word, tag 0)."""
        if len(word.boxes) == 1 and word.boxes[0] < len(objects):
            i = word.boxes[0]
            return (NAMES[i % len(NAMES)] if objects[i] == "person" else objects[i]), i + 1
        between = 0 < k < len(words) - 1 and words[k - 1].boxes and words[k + 1].boxes
        if word.text == "," and between:  # "a, b and c": VL-BERT joins every pair by "and"
            return "and", 0
        return word.text, None

    def example(self, example: Example) -> VlBertTokens:
        objects = list((example.raw or {}).get("objects", ()))
        if example.context is None:
            rows = [self._single(c, objects) for c in example.choices]
        else:
            rows = self._pairs(example, objects)
        arrays = [np.asarray(r, dtype=np.int64).reshape(-1, 5) for r in rows]
        return VlBertTokens(
            example.image_id,
            [a[:, 0] for a in arrays],
            [a[:, 1] for a in arrays],
            [a[:, 2] for a in arrays],
            [a[:, 3:] for a in arrays],
        )

    def _single(self, text: Text, objects: Sequence[str]) -> list[tuple[int, ...]]:
        body = self.words(text, text.words, objects)[: self.seq_len]
        return self._sequence(body, [])

    def _pairs(self, example: Example, objects: Sequence[str]) -> list[list[tuple[int, ...]]]:
        context = example.context
        n = question_words(example)
        q = self.words(context, context.words[:n], objects)
        a = self.words(context, context.words[n:], objects)
        shift = len(context.text) + 1
        out = []
        for choice in example.choices:
            c = [
                (i, t, s + shift, e + shift)
                for i, t, s, e in self.words(choice, choice.words, objects)
            ]
            if a:  # QA->R (vcr.py __getitem__, 'QA2R')
                while len(q) + len(a) + len(c) > self.seq_len:
                    if len(c) > len(q) + len(a):
                        c.pop()
                    elif len(q) > 1:
                        q.pop()
                    else:
                        a.pop()
            else:  # Q->A: the question shrinks for good
                while len(q) + len(c) > self.seq_len:
                    (c if len(c) > len(q) else q).pop()
            out.append(self._sequence(q + a, c))
        return out

    def _sequence(self, first: list[Row], second: list[Row]) -> list[tuple[int, ...]]:
        """[CLS] first [SEP] (type 0) second [SEP] (type 1), as prepare_text_from_qa."""
        cls_id, sep_id = self.tokenizer.cls_token_id, self.tokenizer.sep_token_id
        rows = [(cls_id, 0, 0, -1, -1)] + [(i, 0, t, s, e) for i, t, s, e in first]
        rows.append((sep_id, 0, 0, -1, -1))
        if second:
            rows += [(i, 1, t, s, e) for i, t, s, e in second] + [(sep_id, 1, 0, -1, -1)]
        return rows


def pad_tokens(items: Sequence[VlBertTokens], pad_id: int) -> dict[str, torch.Tensor]:
    """The B x C sequences of a batch, padded: ids, types, tags, mask, spans ((-1, -1) pads)."""
    rows = [
        (i, t, g, s)
        for item in items
        for i, t, g, s in zip(item.ids, item.types, item.tags, item.spans)
    ]
    n, length = len(rows), max(len(r[0]) for r in rows)
    out = {
        "input_ids": torch.full((n, length), pad_id, dtype=torch.long),
        "token_types": torch.zeros((n, length), dtype=torch.long),
        "tags": torch.zeros((n, length), dtype=torch.long),
        "attention_mask": torch.zeros((n, length), dtype=torch.bool),
        "token_spans": torch.full((n, length, 2), -1, dtype=torch.long),
    }
    for k, (ids, types, tags, spans) in enumerate(rows):
        size = len(ids)
        out["input_ids"][k, :size] = torch.from_numpy(ids)
        out["token_types"][k, :size] = torch.from_numpy(types)
        out["tags"][k, :size] = torch.from_numpy(tags)
        out["attention_mask"][k, :size] = True
        out["token_spans"][k, :size] = torch.from_numpy(spans)
    return out


# ----------------------------------------------------------------------------- images


@dataclass
class BoxPixelInputs:
    """A batch of images as VL-BERT reads them, with the dataset's boxes (resized pixels)."""

    pixels: torch.Tensor  # [B, 3, H, W] float32, BGR x 255 minus the means
    boxes: torch.Tensor  # [B, R, 4] float32 (x1, y1, x2, y2): whole image, then objects
    box_mask: torch.Tensor  # [B, R] bool
    classes: torch.Tensor  # [B, R] long: CATEGORIES index (0 whole image / padding)
    masks: torch.Tensor  # [B, R, 14, 14] float32 instance masks
    size: torch.Tensor  # [B, 2] float32: the resized image's (w, h)

    def to(self, device: str | torch.device) -> BoxPixelInputs:
        return BoxPixelInputs(
            *(
                getattr(self, f).to(device)
                for f in ("pixels", "boxes", "box_mask", "classes", "masks", "size")
            )
        )


def target_size(width: int, height: int, scales: Sequence[int]) -> tuple[int, int]:
    """transforms.py `Resize.get_size`: shorter side scales[0], longer side at most scales[1]."""
    size, small, large = scales[0], float(min(width, height)), float(max(width, height))
    if large / small * size > scales[1]:
        size = int(scales[1] * small / large)
    if (width <= height and width == size) or (height <= width and height == size):
        return width, height
    if width < height:
        return size, int(size * height / width)
    return int(size * width / height), size


def instance_mask(polygons: Sequence[Any], box: Sequence[float]) -> torch.Tensor:
    """common/utils/mask.py `generate_instance_mask`: the box's polygons (image pixels) drawn
    on a 14 x 14 grid over the box by `skimage.draw.polygon`, as VL-BERT draws them."""
    try:
        from skimage.draw import polygon as draw
    except ImportError:
        raise ConfigError(
            "vl-bert draws its instance masks with scikit-image: pip install 'madcache[vlbert]'"
        ) from None
    mask = torch.zeros(MASK_SIZE, MASK_SIZE)
    ratio_x = float(MASK_SIZE) / (box[2] - box[0] + 1)
    ratio_y = float(MASK_SIZE) / (box[3] - box[1] + 1)
    for points in polygons:
        p = torch.as_tensor(points).reshape(-1, 2).to(torch.float32)
        x = ((p[:, 0] - box[0]) * ratio_x).clamp(min=0, max=MASK_SIZE - 1)
        y = ((p[:, 1] - box[1]) * ratio_y).clamp(min=0, max=MASK_SIZE - 1)
        rows, cols = draw(y.numpy(), x.numpy())
        mask[torch.from_numpy(rows), torch.from_numpy(cols)] = 1.0
    return mask


class VlBertImages:
    """Examples -> `BoxPixelInputs`: each image read, resized and boxed once (the `keep` most
    recently used kept). Thread-safe, like students/visual.py's PixelLoader."""

    def __init__(
        self, root: str | Path, *, scales: Sequence[int], means: Sequence[float], keep: int = 64
    ) -> None:
        self.root, self.scales, self.means, self.keep = Path(root), list(scales), list(means), keep
        self.memo: OrderedDict[str, tuple[torch.Tensor, ...]] = OrderedDict()
        self.lock = threading.Lock()

    def __call__(self, examples: Sequence[Example]) -> BoxPixelInputs:
        items = [self._image(ex) for ex in examples]
        height = max(i[0].shape[1] for i in items)
        width = max(i[0].shape[2] for i in items)
        count = max(i[1].shape[0] for i in items)
        batch = BoxPixelInputs(
            torch.zeros(len(items), 3, height, width),
            torch.zeros(len(items), count, 4),
            torch.zeros(len(items), count, dtype=torch.bool),
            torch.zeros(len(items), count, dtype=torch.long),
            torch.zeros(len(items), count, MASK_SIZE, MASK_SIZE),
            torch.stack([i[4] for i in items]),
        )
        for b, (pixels, boxes, classes, masks, _) in enumerate(items):
            batch.pixels[b, :, : pixels.shape[1], : pixels.shape[2]] = pixels
            n = boxes.shape[0]
            batch.boxes[b, :n], batch.box_mask[b, :n] = boxes, True
            batch.classes[b, :n], batch.masks[b, :n] = classes, masks
        return batch

    def _image(self, example: Example) -> tuple[torch.Tensor, ...]:
        with self.lock:
            if example.image_id in self.memo:
                self.memo.move_to_end(example.image_id)
                return self.memo[example.image_id]
        item = self.load(example)
        with self.lock:
            self.memo[example.image_id] = item
            if len(self.memo) > self.keep:
                self.memo.popitem(last=False)
        return item

    def load(self, example: Example) -> tuple[torch.Tensor, ...]:
        """(pixels [3, H, W], boxes [R, 4], classes [R], masks [R, 14, 14], size [2])."""
        from torchvision.transforms import functional as TF

        from madcache.data.paths import safe_join
        from madcache.data.vcr import load_vcr_metadata
        from madcache.students.region_extractors import load_image

        image = load_image(safe_join(self.root, example.image_path, field="image_path"))
        w0, h0 = image.size
        boxes, classes, masks = [[0.0, 0.0, w0 - 1.0, h0 - 1.0]], [0], [torch.ones(14, 14)]
        if example.meta_path is not None:
            meta = load_vcr_metadata(self.root, example)
            index = {c: i for i, c in enumerate(CATEGORIES)}
            for box, name, segm in zip(meta.boxes, meta.names, meta.segms):
                boxes.append([float(v) for v in box[:4]])
                classes.append(index.get(name, 0))
                masks.append(instance_mask(segm, box[:4].tolist()))
        w, h = target_size(w0, h0, self.scales)
        image = TF.to_tensor(TF.resize(image, [h, w]))[[2, 1, 0]] * 255
        image = TF.normalize(image, mean=self.means, std=[1.0, 1.0, 1.0])
        fixed = (self.scales[0], self.scales[1]) if h <= w else (self.scales[1], self.scales[0])
        pixels = torch.zeros(3, *fixed)
        pixels[:, :h, :w] = image
        box = torch.tensor(boxes) * torch.tensor([w / w0, h / h0, w / w0, h / h0])
        box[:, 0::2] = box[:, 0::2].clamp(0, w - 1)
        box[:, 1::2] = box[:, 1::2].clamp(0, h - 1)
        return (
            pixels,
            box,
            torch.tensor(classes),
            torch.stack(masks),
            torch.tensor([float(w), float(h)]),
        )
