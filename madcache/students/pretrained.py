"""What the students built on pretrained transformers checkpoints (`visualbert`, `vilt`) share:
their options, loading a local `save_pretrained` directory (`pretrained_parts`), the
`PretrainedStudent` base class (its parts and saving), task logits, and the label-free texts of
image-text matching.

Image-text matching in the adaptive-finetuning stage has no task labels (MAD.md, "Adaptive
finetuning"): a positive must be a text that is true of its image without knowing the answer.
Each reader puts one in `Example.label_free_text`: the question (VCR, VQA) or the premise
caption (SNLI-VE's `sentence1`, a Flickr30k caption of the image). A VCR answer choice is never
used: three of the four are wrong, and the right one is a label.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from madcache.core.config import config_from_dict
from madcache.core.errors import CheckpointNotFoundError, ConfigError
from madcache.core.io import loading
from madcache.data.base import TASKS
from madcache.data.records import Example
from madcache.data.vqa import read_answer_vocab
from madcache.students.base import (
    StudentOutput,
    exported_options,
    image_of,
    text_then_visual_output,
)
from madcache.students.pretraining import itm_batch, mask_tokens
from madcache.students.tokens import encode_texts

TOKENIZER_FILES = ("tokenizer.json", "vocab.txt")


@dataclass
class PretrainedStudentConfig:
    """Options shared by the students that load a transformers checkpoint directory.

    `checkpoint` is a local `save_pretrained` directory (required unless `model_config`, the
    internal resolved config a saved student is rebuilt from, is given). `tokenizer_dir` defaults
    to the checkpoint directory when it holds a tokenizer, else the MiniLM package's BERT uncased
    WordPiece vocabulary (the vocabulary of bert-base-uncased, which VisualBERT and ViLT use).
    """

    checkpoint: str | None = None
    tokenizer_dir: str | None = None
    task: str = "multiple_choice"
    num_classes: int = 3
    answers: list[str] = field(default_factory=list)
    answer_vocab: str | None = None
    max_length: int = 128
    model_config: dict[str, Any] | None = None

    student = "pretrained"

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ConfigError(
                f"{self.student}: unknown task {self.task!r}; valid: {', '.join(TASKS)}"
            )
        if self.answer_vocab is not None and not self.answers:
            self.answers = read_answer_vocab(self.answer_vocab)
            self.answer_vocab = None
        if self.task == "multilabel" and not self.answers:
            raise ConfigError(
                f"{self.student} task=multilabel (VQA) needs the answer vocabulary: "
                "answer_vocab=FILE, the same as the cache's (manifest "
                "extra.answer_vocab)"
            )
        if self.checkpoint is None and self.model_config is None:
            raise ConfigError(
                f"{self.student} needs checkpoint=DIR: a local directory written "
                "by save_pretrained (madcache never downloads)"
            )
        if self.max_length < 3:
            raise ConfigError(f"{self.student}: max_length must be >= 3, got {self.max_length}")

    @classmethod
    def from_options(cls, options: Mapping[str, Any]):
        return config_from_dict(
            cls,
            options,
            noun="option",
            where=f"{cls.student}: ",
            hidden=frozenset({"model_config"}),
        )

    def num_outputs(self) -> int:
        return {
            "multiple_choice": 1,
            "classification": self.num_classes,
            "multilabel": len(self.answers),
        }[self.task]


def checkpoint_dir(path: str, student: str) -> Path:
    directory = Path(path).expanduser()
    if not (directory / "config.json").is_file():
        raise CheckpointNotFoundError(
            f"{student}: checkpoint {directory} is not a local "
            "transformers directory (no config.json); pass a directory "
            "written by save_pretrained"
        )
    return directory


def load_model(model_cls, config: PretrainedStudentConfig):
    """The model class built from `model_config` (a saved student: weights come later) or loaded
    from the checkpoint directory in float32, offline. Heads the checkpoint lacks start random."""
    if config.model_config is not None:
        return model_cls(model_cls.config_class.from_dict(config.model_config))
    path = checkpoint_dir(config.checkpoint, config.student)
    os.environ["HF_HUB_OFFLINE"] = "1"
    with loading(path, what=f"{config.student} checkpoint"):
        return model_cls.from_pretrained(str(path), local_files_only=True, dtype=torch.float32)


def tokenizer_for(config: PretrainedStudentConfig):
    """The fast tokenizer `tokenizer_dir`, else the checkpoint's own, else MiniLM's."""
    from madcache.students.tokens import default_tokenizer_dir, load_tokenizer

    if config.tokenizer_dir is not None:
        return load_tokenizer(config.tokenizer_dir)
    checkpoint = Path(config.checkpoint) if config.checkpoint else None
    if checkpoint is not None and any((checkpoint / f).is_file() for f in TOKENIZER_FILES):
        return load_tokenizer(checkpoint)
    return load_tokenizer(default_tokenizer_dir())


def check_vocabulary(tokenizer, model_config, student: str) -> None:
    if len(tokenizer) > model_config.vocab_size:
        raise ConfigError(
            f"{student}: the tokenizer has {len(tokenizer)} tokens but the model's "
            f"vocabulary only {model_config.vocab_size}: pass the checkpoint's own "
            "tokenizer with tokenizer_dir=DIR"
        )


def pretrained_parts(
    config_cls: type[PretrainedStudentConfig], model_cls, options: Mapping[str, Any]
) -> tuple[PretrainedStudentConfig, Any, Any]:
    """(config, tokenizer, model) of a pretrained student built from its `--student-option`
    values: the options checked into `config_cls`, `tokenizer_for` and `load_model`."""
    config = config_cls.from_options(options)
    return config, tokenizer_for(config), load_model(model_cls, config)


class PretrainedStudent(nn.Module):
    """What `visualbert` and `vilt` keep of their parts: the config, the tokenizer (checked to
    fit the model's vocabulary), the transformers model and the sizes read from it. Subclasses
    set `name` and add their heads."""

    name = "pretrained"

    def __init__(self, config: PretrainedStudentConfig, tokenizer, model) -> None:
        super().__init__()
        check_vocabulary(tokenizer, model.config, self.name)
        self.config = config
        self.tokenizer = tokenizer
        self.model = model
        self.hidden_size = model.config.hidden_size
        self.task = config.task
        self.answers = list(config.answers)
        self.max_length = min(config.max_length, model.config.max_position_embeddings)

    def export_options(self, directory: Path) -> dict[str, Any]:
        """Options that rebuild the student (`save_student`): the resolved model config, the
        tokenizer written to `directory/tokenizer`."""
        return exported_options(
            self.config,
            self.tokenizer,
            directory,
            checkpoint=None,
            model_config=self.model.config.to_dict(),
        )

    def transformers_model(self):
        """The trained student as one transformers task model (subclasses)."""
        raise NotImplementedError

    def save_transformers(self, directory: Path) -> dict[str, Any]:
        """`save_pretrained` (safetensors) of `transformers_model()` and of the tokenizer into
        `directory`, so transformers loads the trained student without madcache; returns what
        was written for the run's record: the class, the task and the tokens per text the
        student kept (`max_length`: longer texts were cut there)."""
        model = self.transformers_model()
        model.save_pretrained(str(directory), safe_serialization=True)
        self.tokenizer.save_pretrained(str(directory))
        return {"class": type(model).__name__, "task": self.task, "max_length": self.max_length}

    def task_labels(self) -> dict[str, Any]:
        """The transformers config's label fields of the student's head: the answers as
        `id2label` for a VQA-style (multilabel) head, else transformers' `LABEL_i` names."""
        count = self.config.num_outputs()
        names = self.answers if self.task == "multilabel" else [f"LABEL_{i}" for i in range(count)]
        return {
            "id2label": dict(enumerate(names)),
            "label2id": {name: i for i, name in enumerate(names)},
        }


def transformers_task_model(model_cls, config, weights: Mapping[str, torch.Tensor], **changes: Any):
    """`model_cls` (a transformers task model) with `config` updated by `changes`, holding
    exactly `weights` (every parameter and buffer named, none left at its random init)."""
    model = model_cls(type(config).from_dict({**config.to_dict(), **changes}))
    missing, unexpected = model.load_state_dict(
        {k: v.detach().clone() for k, v in weights.items()}, strict=False
    )
    buffers = {name for name, _ in model.named_buffers()}
    missing = [k for k in missing if k not in buffers]
    if missing or unexpected:
        raise ValueError(
            f"{model_cls.__name__}: no student weights for {missing[:5]}, unused {unexpected[:5]}"
        )
    return model.eval()


def num_choices(examples: Sequence[Example]) -> int:
    counts = {ex.num_choices for ex in examples}
    if len(counts) != 1:
        raise ValueError(f"a batch mixes examples with {sorted(counts)} choices")
    return counts.pop()


# ----------------------------------------------------------------------------- the pieces
# Both students have `encode(ids, mask, visual, rows) -> (hidden [N, L + V, H], pooled [N, H])`,
# where sequence n sees image rows[n] of `visual` (VisualBERT: regions; ViLT: patch embeddings).


def text_inputs(student, examples: Sequence[Example]) -> dict[str, Any]:
    """Every `example.texts[c]` (B x C sequences) tokenised with character offsets, on the
    student's device, with the examples themselves (the ITM texts come from them)."""
    texts = [text.text for ex in examples for text in ex.texts]
    encoded = encode_texts(student.tokenizer, texts, max_length=student.max_length)
    return {
        **{k: v.to(student.device) for k, v in encoded.items()},
        "num_choices": num_choices(examples),
    }


def student_output(
    student, inputs: Mapping[str, Any], visual: Any, head: Callable[[torch.Tensor], torch.Tensor]
) -> StudentOutput:
    """Run the B x C sequences: logits from `head(pooled)`, V_s at the first visual position
    (right after the L text positions), T_s at the text [CLS]."""
    ids, choices = inputs["input_ids"], inputs["num_choices"]
    batch, length = ids.shape[0] // choices, ids.shape[1]
    hidden, pooled = student.encode(
        ids, inputs["attention_mask"], visual, image_of(batch, choices, ids.device)
    )
    return text_then_visual_output(
        hidden,
        head(pooled),
        task=student.task,
        batch=batch,
        choices=choices,
        length=length,
        token_spans=inputs["token_spans"],
    )


def mlm_itm_losses(
    student,
    inputs: Mapping[str, Any],
    examples: Sequence[Example],
    visual: Any,
    generator: torch.Generator,
    *,
    mlm_head: Callable,
    itm_head: Callable,
    match_label: int,
) -> dict[str, torch.Tensor]:
    """The AF losses without task labels: MLM (`mask_tokens`: 15% of the real tokens of the
    scored texts, with their own image) through `mlm_head`, and image-text matching of the
    label-free texts (`itm_batch`) through `itm_head` on the pooled output, `match_label` being
    the class of a matching pair in the checkpoint's convention. Random choices come from
    `generator` (a CPU generator), so masks and pairings repeat for a seed."""
    ids, choices = inputs["input_ids"], inputs["num_choices"]
    batch = ids.shape[0] // choices
    real = inputs["token_spans"][..., 0] >= 0
    masked, selected = mask_tokens(
        ids,
        real,
        generator,
        vocab_size=len(student.tokenizer),
        mask_id=student.tokenizer.mask_token_id,
    )
    hidden, _ = student.encode(
        masked, inputs["attention_mask"], visual, image_of(batch, choices, ids.device)
    )
    text = hidden[:, : ids.shape[1]]
    mlm = (
        F.cross_entropy(mlm_head(text[selected]), ids[selected])
        if selected.any()
        else text.sum() * 0.0
    )
    texts, rows, matched = itm_batch(examples, generator)
    if not texts:
        return {"mlm": mlm, "itm": mlm * 0.0}
    pair = encode_texts(student.tokenizer, texts, max_length=student.max_length)
    _, pooled = student.encode(
        pair["input_ids"].to(ids.device),
        pair["attention_mask"].to(ids.device),
        visual,
        rows.to(ids.device),
    )
    labels = torch.where(matched, match_label, 1 - match_label).long().to(ids.device)
    return {"mlm": mlm, "itm": F.cross_entropy(itm_head(pooled), labels)}
