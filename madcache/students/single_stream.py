"""The built-in student: a single-stream (UNITER-style) vision-language transformer.

One sequence per scored text (docs/students.md):

    [CLS] text tokens [SEP] <pad..>  [IMG] region_1 .. region_R <pad..>
    positions 0 .. L-1               0 ......................... 0
    token type 0                     1 ......................... 1   (the modality embedding)

- text tokens: WordPiece ids -> the BERT word embedding (+ position, + type 0);
- region tokens: LN(Linear(region feature)) + LN(Linear(box geometry)) (+ type 1); regions are a
  set, so they all share position 0 (no order is implied);
- [IMG]: a learned vector (+ type 1). Its output is V_s; the [CLS] output is T_s (MAD.md).

The encoder is transformers' `BertModel` (random init from a small config, or the text
embeddings/encoder of a local BERT-family directory with `init_text_from`). Heads read the
[CLS] output: one score per (image, text_c) pair ("multiple_choice", VCR), 3 classes
("classification", SNLI-VE) or one logit per answer ("multilabel", VQA). The adaptive-finetuning
losses are MLM over the scored texts (15% of text tokens; 80% [MASK] / 10% random / 10% kept;
the vocabulary head computed at the masked positions only, its decoder *not* tied to the word
embedding: see `SingleStreamStudent`) and image-text matching on label-free pairs only: each
example's `label_free_text` (VCR/VQA question, SNLI-VE premise) with its own image is a
positive, with another image of the batch a negative (a binary head on [CLS]); a choice is
never an ITM text, since it may be wrong.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from madcache.core.config import check_ranges, config_from_dict, setting
from madcache.core.errors import CheckpointNotFoundError, ConfigError
from madcache.core.io import load_weights, loading, read_json
from madcache.data.base import TASKS
from madcache.data.records import Example
from madcache.data.vqa import read_answer_vocab
from madcache.students.base import (
    TOKENIZER_SUBDIR,
    RegionInputs,
    StudentOutput,
    exported_options,
    image_of,
    task_logits,
    to_device,
)
from madcache.students.pretraining import itm_batch, mask_tokens
from madcache.students.region_extractors import BOXCROP_DIM
from madcache.students.regions import GEOMETRY_DIM, box_geometry
from madcache.students.tokens import (
    TOKENIZER_LOCK,
    default_tokenizer_dir,
    encode_texts,
    load_tokenizer,
)


@dataclass
class TokenisedExample:
    """One example's texts as the student's tokens: `ids[c]` [L_c] and `spans[c]` [L_c, 2]
    (character spans in `texts[c].text`; (-1, -1) for special tokens)."""

    image_id: str
    ids: list[np.ndarray]
    spans: list[np.ndarray]


@dataclass
class SingleStreamConfig:
    """Options of `single-stream` (`--student-option KEY=VALUE`). Unknown keys raise.

    The architecture options (hidden_size .. intermediate_size) are ignored when
    `init_text_from` names a BERT-family directory: its own config is used.
    `bert_config` is internal: `save_student` stores the resolved encoder config there.
    """

    task: Literal[TASKS] = setting(
        "multiple_choice", help="classification for SNLI-VE, multilabel for VQA."
    )
    num_classes: int = setting(3, minimum=2, help="Classes of the classification task.")
    answers: list[str] = setting(factory=list, help="VQA: the answer vocabulary.")
    answer_vocab: str | None = setting(
        None, help="VQA: a file with the answer vocabulary (.txt one per line, or a .json list)."
    )
    region_dim: int = setting(BOXCROP_DIM, minimum=1, help="Region feature width.")
    hidden_size: int = setting(128, minimum=1, help="Random-init encoder width.")
    num_layers: int = setting(2, minimum=1, help="Random-init encoder layers.")
    num_heads: int = setting(4, minimum=1, help="Random-init encoder attention heads.")
    intermediate_size: int = setting(512, minimum=1, help="Random-init encoder MLP width.")
    dropout: float = setting(0.1, minimum=0, below=1, help="Hidden and attention dropout.")
    max_length: int = setting(128, minimum=3, help="Text tokens per sequence, specials included.")
    tokenizer_dir: str | None = setting(None, help="Local tokenizer directory.")
    init_text_from: str | None = setting(
        None, help="Local BERT-family directory the encoder starts from."
    )
    init_from: str | None = setting(
        None,
        help="A saved single-stream student (`save_student` "
        "directory, e.g. `madcache demo student`) whose "
        "weights the student starts from; its task head "
        "is new.",
    )
    bert_config: dict[str, Any] | None = setting(
        None, help="Internal: the resolved encoder config (save_student)."
    )

    def __post_init__(self) -> None:
        check_ranges(self)
        if self.answer_vocab is not None and not self.answers:
            self.answers = read_answer_vocab(self.answer_vocab)
            self.answer_vocab = None
        if self.task == "multilabel" and not self.answers:
            raise ConfigError(
                "single-stream task=multilabel (VQA) needs the answer vocabulary: "
                "answer_vocab=FILE (.txt one per line, or a .json list), the same "
                "vocabulary as the cache's (manifest extra.answer_vocab)"
            )
        sized_here = self.bert_config is None and self.init_text_from is None
        if sized_here and self.hidden_size % self.num_heads:
            raise ConfigError(
                f"single-stream: hidden_size ({self.hidden_size}) must be a "
                f"multiple of num_heads ({self.num_heads})"
            )

    @classmethod
    def from_options(cls, options: Mapping[str, Any]) -> SingleStreamConfig:
        return config_from_dict(
            cls, options, noun="option", where="single-stream: ", hidden=frozenset({"bert_config"})
        )


def build_encoder(config: SingleStreamConfig, vocab_size: int):
    """`BertModel` without pooler: from `bert_config`, from `init_text_from`, or a small config."""
    from transformers import BertConfig, BertModel

    if config.bert_config is not None:
        return BertModel(BertConfig.from_dict(config.bert_config), add_pooling_layer=False)
    if config.init_text_from is not None:
        source = Path(config.init_text_from)
        if not (source / "config.json").is_file():
            raise CheckpointNotFoundError(
                f"init_text_from: {source} is not a local transformers directory (no config.json)"
            )
        with loading(source, what="init_text_from checkpoint"):
            return BertModel.from_pretrained(
                str(source), add_pooling_layer=False, local_files_only=True
            )
    bert_config = BertConfig(
        vocab_size=vocab_size,
        hidden_size=config.hidden_size,
        num_hidden_layers=config.num_layers,
        num_attention_heads=config.num_heads,
        intermediate_size=config.intermediate_size,
        hidden_dropout_prob=config.dropout,
        attention_probs_dropout_prob=config.dropout,
        max_position_embeddings=max(512, config.max_length),
        type_vocab_size=2,
    )
    return BertModel(bert_config, add_pooling_layer=False)


def _head(hidden: int, out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(hidden, hidden), nn.GELU(), nn.LayerNorm(hidden), nn.Linear(hidden, out)
    )


class SingleStreamStudent(nn.Module):
    """See the module docstring. Build with `single_stream(**options)`."""

    name = "single-stream"
    head_prefixes = ("head.",)  # the task head: --head-lr-mul (train/optim.py)

    def __init__(self, config: SingleStreamConfig, tokenizer, encoder) -> None:
        super().__init__()
        self.config = config
        self.tokenizer = tokenizer
        self.bert = encoder
        hidden = encoder.config.hidden_size
        if encoder.config.type_vocab_size < 2:
            raise ConfigError(
                "single-stream needs an encoder with type_vocab_size >= 2 (the modality embedding)"
            )
        if len(tokenizer) > encoder.config.vocab_size:
            raise ConfigError(
                f"tokenizer has {len(tokenizer)} tokens but the encoder's "
                f"vocabulary only {encoder.config.vocab_size}"
            )
        self.hidden_size = hidden
        self.task = config.task
        self.answers = list(config.answers)
        self.img_token = nn.Parameter(torch.randn(hidden) * 0.02)
        self.region_feat = nn.Sequential(nn.Linear(config.region_dim, hidden), nn.LayerNorm(hidden))
        self.region_geom = nn.Sequential(nn.Linear(GEOMETRY_DIM, hidden), nn.LayerNorm(hidden))
        self.head = _head(hidden, self._num_outputs())
        self.itm_head = nn.Linear(hidden, 2)
        self.mlm_transform = nn.Sequential(
            nn.Linear(hidden, hidden), nn.GELU(), nn.LayerNorm(hidden)
        )
        # Untied from the word embedding on purpose. With a tied decoder, every vocabulary row
        # that a small corpus never has as a target (30k of BERT's 30.5k on the demo captions)
        # gets only the softmax's "not this word" gradient, one shared direction; AdamW turns
        # those tiny gradients into full-size steps, so the input embeddings of all unseen
        # words converge (the demo's person-tag pieces ##1/##2/##3: cosine 0.06 -> 0.88 in 500
        # caption steps) and the student can no longer tell person1 from person2. Untied,
        # an unseen word's input embedding keeps its initialisation until a task uses it.
        self.mlm_decoder = nn.Linear(hidden, encoder.config.vocab_size)

    def _num_outputs(self) -> int:
        return {
            "multiple_choice": 1,
            "classification": self.config.num_classes,
            "multilabel": len(self.answers),
        }[self.task]

    @property
    def device(self) -> torch.device:
        return self.img_token.device

    # ------------------------------------------------------------------ inputs

    def prepare(self, examples: Sequence[Example], regions: RegionInputs) -> dict[str, Any]:
        """Tokenise every `example.texts[c]` (B x C sequences, flattened) with char offsets."""
        return to_device(self.collate(self.tokenise(examples), regions), self.device)

    def tokenise(self, examples: Sequence[Example]) -> list[TokenisedExample]:
        """Token ids and character spans of each example's texts, truncated to `max_length`
        (the training pipeline calls this once per example, ahead of the step)."""
        texts = [text.text for ex in examples for text in ex.texts]
        if not texts:
            return []
        with TOKENIZER_LOCK:  # the Rust tokenizer refuses concurrent use from two threads
            encoded = self.tokenizer(
                texts,
                truncation=True,
                max_length=self.config.max_length,
                return_offsets_mapping=True,
                return_special_tokens_mask=True,
            )
        out, row = [], 0
        for ex in examples:
            ids, spans = [], []
            for _ in ex.texts:
                ids.append(np.asarray(encoded["input_ids"][row], dtype=np.int64))
                span = np.asarray(encoded["offset_mapping"][row], dtype=np.int64).reshape(-1, 2)
                span[np.asarray(encoded["special_tokens_mask"][row], dtype=bool)] = -1
                spans.append(span)
                row += 1
            out.append(TokenisedExample(ex.image_id, ids, spans))
        return out

    def collate(self, items: Sequence[TokenisedExample], regions: RegionInputs) -> dict[str, Any]:
        """A batch of tokenised examples -> padded CPU tensors (B x C sequences, flattened)."""
        num_choices = _num_choices(items)
        if regions.feat.shape[0] != len(items):
            raise ValueError(f"{len(items)} examples but regions for {regions.feat.shape[0]}")
        if regions.feat.shape[-1] != self.config.region_dim:
            raise ConfigError(
                f"region features have {regions.feat.shape[-1]} dims but the "
                f"student expects region_dim={self.config.region_dim}: pass "
                f"--student-option region_dim={regions.feat.shape[-1]}"
            )
        sequences = [(ids, span) for item in items for ids, span in zip(item.ids, item.spans)]
        length = max(len(ids) for ids, _ in sequences)
        input_ids = np.full((len(sequences), length), self.tokenizer.pad_token_id, np.int64)
        mask = np.zeros((len(sequences), length), dtype=bool)
        spans = np.full((len(sequences), length, 2), -1, dtype=np.int64)
        for n, (ids, span) in enumerate(sequences):
            input_ids[n, : len(ids)] = ids
            mask[n, : len(ids)] = True
            spans[n, : len(ids)] = span
        return {
            "input_ids": torch.from_numpy(input_ids),
            "attention_mask": torch.from_numpy(mask),
            "token_spans": torch.from_numpy(spans),
            "num_choices": num_choices,
            "image_ids": [item.image_id for item in items],
            "regions": RegionInputs(
                regions.feat.float(), regions.boxes.float(), regions.mask.bool()
            ),
        }

    def _encode_texts(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        """WordPiece ids, attention mask and each token's char span ((-1, -1) for specials and
        padding), on the student's device."""
        encoded = encode_texts(self.tokenizer, list(texts), max_length=self.config.max_length)
        return {k: v.to(self.device) for k, v in encoded.items()}

    # ------------------------------------------------------------------ model

    def visual_embeddings(self, regions: RegionInputs) -> tuple[torch.Tensor, torch.Tensor]:
        """([IMG] + region embeddings [B, 1+R, H], mask [B, 1+R]), once per image."""
        batch = regions.feat.shape[0]
        tokens = self.region_feat(regions.feat) + self.region_geom(box_geometry(regions.boxes))
        img = self.img_token.expand(batch, 1, -1)
        ones = torch.ones(batch, 1, dtype=torch.bool, device=regions.mask.device)
        return torch.cat([img, tokens], dim=1), torch.cat([ones, regions.mask], dim=1)

    def encode(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        regions: RegionInputs,
        image_of: torch.Tensor,
    ) -> torch.Tensor:
        """Last hidden states [N, L + 1 + R, H]; sequence n sees the regions of image_of[n]."""
        n, length = input_ids.shape
        visual, visual_mask = self.visual_embeddings(regions)
        visual, visual_mask = visual[image_of], visual_mask[image_of]
        words = self.bert.embeddings.word_embeddings(input_ids)
        embeds = torch.cat([words, visual], dim=1)
        n_visual = visual.shape[1]
        types = torch.cat(
            [
                torch.zeros(n, length, dtype=torch.long, device=embeds.device),
                torch.ones(n, n_visual, dtype=torch.long, device=embeds.device),
            ],
            1,
        )
        positions = torch.cat(
            [
                torch.arange(length, device=embeds.device).expand(n, length),
                torch.zeros(n, n_visual, dtype=torch.long, device=embeds.device),
            ],
            1,
        )
        mask = torch.cat([attention_mask, visual_mask], dim=1).long()
        out = self.bert(
            inputs_embeds=embeds, attention_mask=mask, token_type_ids=types, position_ids=positions
        )
        return out.last_hidden_state

    def forward(self, inputs: Mapping[str, Any]) -> StudentOutput:
        ids, choices = inputs["input_ids"], inputs["num_choices"]
        batch, length = ids.shape[0] // choices, ids.shape[1]
        hidden = self.encode(
            ids, inputs["attention_mask"], inputs["regions"], image_of(batch, choices, ids.device)
        )
        cls, img = hidden[:, 0], hidden[:, length]
        size = hidden.shape[-1]
        return StudentOutput(
            logits=self._logits(cls, batch, choices),
            image_token=img.reshape(batch, choices, size),
            cls_token=cls.reshape(batch, choices, size),
            text_tokens=hidden[:, :length].reshape(batch, choices, length, size),
            token_spans=inputs["token_spans"].reshape(batch, choices, length, 2),
        )

    def _logits(self, cls: torch.Tensor, batch: int, choices: int) -> torch.Tensor:
        return task_logits(self.head(cls), self.task, batch, choices)

    # ------------------------------------------------------------------ AF stage

    def pretrain_losses(
        self, inputs: Mapping[str, Any], examples: Sequence[Example], generator: torch.Generator
    ) -> dict[str, torch.Tensor]:
        """MLM on the prepared (scored) texts + ITM on the examples' label-free texts (no task
        labels; see the module docstring). Random choices come from `generator` (a CPU
        generator), so the masks and pairings repeat for a seed."""
        ids, choices = inputs["input_ids"], inputs["num_choices"]
        batch = ids.shape[0] // choices
        own = image_of(batch, choices, ids.device)
        real = inputs["token_spans"][..., 0] >= 0
        masked_ids, selected = mask_tokens(
            ids,
            real,
            generator,
            vocab_size=len(self.tokenizer),
            mask_id=self.tokenizer.mask_token_id,
        )
        hidden = self.encode(masked_ids, inputs["attention_mask"], inputs["regions"], own)
        mlm = self._mlm_loss(hidden[:, : ids.shape[1]], ids, selected)
        return {"mlm": mlm, "itm": self._itm_loss(inputs, examples, generator)}

    def _itm_loss(
        self, inputs: Mapping[str, Any], examples: Sequence[Example], generator: torch.Generator
    ) -> torch.Tensor:
        if all(ex.label_free_text is None for ex in examples):  # no ITM pair in the batch
            return self.itm_head.weight.sum() * 0.0
        texts, image, matched = itm_batch(examples, generator)
        text = self._encode_texts(texts)
        hidden = self.encode(
            text["input_ids"], text["attention_mask"], inputs["regions"], image.to(self.device)
        )
        return F.cross_entropy(self.itm_head(hidden[:, 0]), matched.long().to(self.device))

    def _mlm_loss(
        self, hidden: torch.Tensor, ids: torch.Tensor, selected: torch.Tensor
    ) -> torch.Tensor:
        if not selected.any():
            return hidden.sum() * 0.0
        states = self.mlm_transform(hidden[selected])
        logits = self.mlm_decoder(states)
        return F.cross_entropy(logits, ids[selected])

    # ------------------------------------------------------------------ saving

    def export_options(self, directory: Path) -> dict[str, Any]:
        """Options that rebuild this architecture (`save_student`); writes the tokenizer."""
        return exported_options(
            self.config,
            self.tokenizer,
            directory,
            init_text_from=None,
            init_from=None,
            bert_config=self.bert.config.to_dict(),
        )


def _num_choices(items: Sequence[TokenisedExample]) -> int:
    counts = {len(item.ids) for item in items}
    if len(counts) != 1:
        raise ValueError(f"a batch mixes examples with {sorted(counts)} choices")
    return counts.pop()


def single_stream(**options: Any) -> SingleStreamStudent:
    """Build the student from `--student-option` values (see `SingleStreamConfig`)."""
    config = SingleStreamConfig.from_options(options)
    if config.init_from is not None:
        return from_saved_student(config)
    tokenizer_dir = config.tokenizer_dir or config.init_text_from or default_tokenizer_dir()
    tokenizer = load_tokenizer(tokenizer_dir)
    return SingleStreamStudent(config, tokenizer, build_encoder(config, len(tokenizer)))


# the weights a saved student does not hand on: the task head is the new task's own
NEW_HEAD = "head."


def from_saved_student(config: SingleStreamConfig) -> SingleStreamStudent:
    """A student for `config`'s task whose encoder, embeddings, region layers and MLM/ITM heads
    are those of the saved single-stream student in `init_from` (its tokenizer and encoder
    config too); the task head starts afresh (VL-BERT finetuning: pretrained body, new head)."""
    from madcache.students import STUDENT_JSON, STUDENT_WEIGHTS

    source = Path(config.init_from)
    meta_path = source / STUDENT_JSON
    if not meta_path.is_file():
        raise CheckpointNotFoundError(
            f"init_from: {source} holds no saved student (no "
            f"{STUDENT_JSON}); give a directory `save_student` wrote"
        )
    saved = read_json(meta_path)
    if saved.get("student") != SingleStreamStudent.name:
        raise ConfigError(
            f"init_from: {source} holds a {saved.get('student')!r} student; "
            f"single-stream starts only from a single-stream one"
        )
    options = saved.get("options", {})
    if options.get("region_dim") != config.region_dim:
        raise ConfigError(
            f"init_from: {source} reads {options.get('region_dim')}-dim region "
            f"features, these regions have {config.region_dim}"
        )
    config = dataclasses.replace(
        config,
        init_from=None,
        init_text_from=None,
        bert_config=options["bert_config"],
        max_length=options.get("max_length", config.max_length),
    )
    tokenizer = load_tokenizer(source / options.get("tokenizer_dir", TOKENIZER_SUBDIR))
    student = SingleStreamStudent(config, tokenizer, build_encoder(config, len(tokenizer)))
    weights = source / STUDENT_WEIGHTS
    state = {
        k: v
        for k, v in load_weights(weights, what="init_from weights").items()
        if not k.startswith(NEW_HEAD)
    }
    with loading(weights, what="init_from weights"):
        missing, unexpected = student.load_state_dict(state, strict=False)
    if unexpected or any(not key.startswith(NEW_HEAD) for key in missing):
        raise ConfigError(
            f"init_from: {weights} does not fit this student (missing "
            f"{[k for k in missing if not k.startswith(NEW_HEAD)][:3]}, "
            f"unexpected {unexpected[:3]})"
        )
    return student
