"""The `uniter` student: UNITER (Chen et al. 2020) loaded from its released files as they are
(`uniter-base.pt`, `uniter-large.pt`, the `*-vcr_2nd_stage.pt` files, and VILLA's
`villa-base.pt` / `villa-large.pt`, which have the same architecture and keys).

- network and checkpoint conversion: `uniter_model.py` (released parameter names; one pure
  function `convert_state_dict`); the input UNITER's `data/vcr.py` builds: `uniter_vcr.py`;
- regions from a region store, in its order (VCR: the whole image, then the annotation's boxes
  in object order, so object tag i is region i + 1), with UNITER's 7-d box geometry; the store's
  width must be the checkpoint's `img_dim` (2048 for the released files);
- V_s is the output at the first region, T_s the text [CLS] output;
- heads on the pooled [CLS]: VCR `vcr_output` (2-way per choice, the rank score is logit 1, as
  `UniterForVisualCommonsenseReasoning` at inference), SNLI-VE / VQA `vqa_output` (`model/ve.py`,
  `model/vqa.py`); a head the checkpoint lacks starts random and the load report says so;
- adaptive finetuning (no task labels): MLM through `cls.predictions` (tied to the word
  embedding) on the scored texts with their image, ITM through `itm_output` (1 = match) on the
  label-free texts (students/pretraining.py), and MRFR through `feat_regress` (tied to
  `img_linear`) on the label-free texts with their own image: 15% of the regions (at least one)
  zeroed plus the mask embedding, their features regressed (mean squared error). MRC is not
  done: it needs the detector's class distribution per region, which a region store lacks.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from madcache.core.errors import CheckpointCorruptError, CheckpointNotFoundError, ConfigError
from madcache.core.io import load_weights, read_json
from madcache.data.records import Example
from madcache.students.base import (
    RegionInputs,
    StudentOutput,
    exported_options,
    image_of,
    key_list,
    text_then_visual_output,
    to_device,
)
from madcache.students.pretrained import PretrainedStudentConfig
from madcache.students.pretraining import itm_pairs, mask_tokens
from madcache.students.regions import box_geometry
from madcache.students.uniter_model import (
    HEADS,
    NUM_OBJECT_TAGS,
    UNUSED,
    VCR_TYPES,
    FeatRegression,
    MlmHead,
    UniterModel,
    answer_head,
    convert_state_dict,
    released_config,
    renamed,
)
from madcache.students.uniter_vcr import UniterTextEncoder, UniterTokens, pad

LOG = logging.getLogger("madcache.students.uniter")
BODY = (
    "uniter.embeddings.word_embeddings.weight",
    "uniter.embeddings.token_type_embeddings.weight",
    "uniter.img_embeddings.img_linear.weight",
    "uniter.encoder.layer.0.intermediate.dense.weight",
)


@dataclass
class UniterStudentConfig(PretrainedStudentConfig):
    """Options of `uniter` (`--student-option KEY=VALUE`); see `PretrainedStudentConfig`.
    `checkpoint` is a released `.pt` state dict, `config_json` UNITER's config (optional: the
    sizes are read from the weights, heads = hidden / 64), `tokenizer_dir` a local bert-base-cased
    directory (required), `region_dim` the region store's width (the trainer passes it),
    `mrfr` whether AF adds MRFR, `seed` the object-tag rows' initialisation (first-stage
    checkpoints on VCR). `max_length` defaults to UNITER's VCR `max_txt_len`, 220."""

    config_json: str | None = None
    region_dim: int | None = None
    mrfr: bool = True
    seed: int = 0
    max_length: int = 220

    student = "uniter"

    def __post_init__(self) -> None:
        if self.checkpoint is None and self.model_config is None:
            raise ConfigError(
                "uniter needs checkpoint=FILE: a released UNITER / VILLA .pt "
                "state dict (uniter-base.pt, villa-base.pt, *-vcr_2nd_stage.pt); "
                "madcache never downloads"
            )
        super().__post_init__()


class UniterStudent(nn.Module):
    """See the module docstring. Build with `uniter(checkpoint=FILE, tokenizer_dir=DIR, ...)`."""

    name = "uniter"
    visual_input = "regions"

    def __init__(
        self, config: UniterStudentConfig, tokenizer, model_config: Mapping[str, Any]
    ) -> None:
        super().__init__()
        self.config, self.tokenizer = config, tokenizer
        self.model_config = dict(model_config)
        vocab, base = model_config["vocab_size"], len(tokenizer)
        if base not in (vocab, vocab - NUM_OBJECT_TAGS):
            raise ConfigError(
                f"uniter: the tokenizer in {config.tokenizer_dir} has {base} tokens, "
                f"the checkpoint's vocabulary {vocab} (bert-base-cased: 28996, "
                f"+ {NUM_OBJECT_TAGS} VCR object tags): pass bert-base-cased's "
                "directory as tokenizer_dir"
            )
        tags = (
            config.task == "multiple_choice"
            and base == vocab - NUM_OBJECT_TAGS
            and model_config["type_vocab_size"] >= VCR_TYPES
        )
        self.text_input = UniterTextEncoder(
            tokenizer,
            tags=tags,
            max_length=min(config.max_length, model_config["max_position_embeddings"]),
        )
        self.hidden_size = hidden = model_config["hidden_size"]
        self.task, self.answers = config.task, list(config.answers)
        self.uniter = UniterModel(model_config)
        if self.task == "multiple_choice":
            self.vcr_output = answer_head(hidden, 2, nn.ReLU())
        else:
            self.vqa_output = answer_head(hidden, config.num_outputs(), nn.GELU())
        self.cls = nn.Module()
        self.cls.predictions = MlmHead(model_config, self.uniter.embeddings.word_embeddings)
        self.itm_output = nn.Linear(hidden, 2)
        self.feat_regress = FeatRegression(model_config, self.uniter.img_embeddings.img_linear)
        self.apply(self._init)
        self.load_report = "random initialisation"

    def _init(self, module: nn.Module) -> None:
        """UNITER's `init_weights`: N(0, initializer_range) weights, zero biases, unit norms."""
        std = self.model_config.get("initializer_range", 0.02)
        if isinstance(module, (nn.Linear, nn.Embedding)):
            module.weight.data.normal_(0.0, std)
        if isinstance(module, nn.Linear) and module.bias is not None:
            module.bias.data.zero_()
        if isinstance(module, nn.LayerNorm):
            module.weight.data.fill_(1.0), module.bias.data.zero_()

    @property
    def device(self) -> torch.device:
        return self.itm_output.weight.device

    # ------------------------------------------------------------------ inputs

    def tokenise(self, examples: Sequence[Example]) -> list[UniterTokens]:
        return [self.text_input.example(ex) for ex in examples]

    def collate(self, items: Sequence[UniterTokens], regions: RegionInputs) -> dict[str, Any]:
        if not isinstance(regions, RegionInputs):
            raise ConfigError(
                "uniter reads region features: build a region store with "
                "`madcache regions` and pass --regions"
            )
        width = self.model_config["img_dim"]
        if regions.feat.shape[-1] != width:
            raise ConfigError(
                f"uniter: region features have {regions.feat.shape[-1]} dims but the "
                f"checkpoint's img_linear reads {width}: build the region store "
                f"with {width}-d features (the released files: a 2048-d detector, "
                "e.g. `madcache regions --extractor butd-tsv`)"
            )
        counts = {len(item.ids) for item in items}
        if len(counts) != 1:
            raise ValueError(f"a batch mixes examples with {sorted(counts)} choices")
        rows = [(i, t, s) for item in items for i, t, s in zip(item.ids, item.types, item.spans)]
        arrays = pad(rows, self.tokenizer.pad_token_id)
        return {
            **{k: torch.from_numpy(v) for k, v in arrays.items()},
            "num_choices": counts.pop(),
            "image_ids": [item.image_id for item in items],
            "regions": RegionInputs(
                regions.feat.float(), regions.boxes.float(), regions.mask.bool()
            ),
        }

    def prepare(self, examples: Sequence[Example], regions: RegionInputs) -> dict[str, Any]:
        return to_device(self.collate(self.tokenise(examples), regions), self.device)

    # ------------------------------------------------------------------ model

    def encode(
        self,
        text: Mapping[str, torch.Tensor],
        regions: RegionInputs,
        rows: torch.Tensor,
        masked: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Hidden states [N, L + R, H]; sequence n sees the regions of image rows[n]."""
        embedded = self.uniter.embed_regions(regions.feat, box_geometry(regions.boxes), masked)
        return self.uniter(
            text["input_ids"],
            text["token_types"],
            text["attention_mask"],
            embedded[rows],
            regions.mask[rows],
        )

    def forward(self, inputs: Mapping[str, Any]) -> StudentOutput:
        ids, choices = inputs["input_ids"], inputs["num_choices"]
        batch, length = ids.shape[0] // choices, ids.shape[1]
        hidden = self.encode(inputs, inputs["regions"], image_of(batch, choices, ids.device))
        pooled = self.uniter.pooler(hidden)
        scores = (
            self.vcr_output(pooled)[:, 1]
            if self.task == "multiple_choice"
            else self.vqa_output(pooled)
        )
        return text_then_visual_output(
            hidden,
            scores,
            task=self.task,
            batch=batch,
            choices=choices,
            length=length,
            token_spans=inputs["token_spans"],
        )

    # ------------------------------------------------------------------ AF stage

    def pretrain_losses(
        self, inputs: Mapping[str, Any], examples: Sequence[Example], generator: torch.Generator
    ) -> dict[str, torch.Tensor]:
        """MLM on the scored texts, ITM and MRFR on the label-free texts (module docstring).
        Random draws come from `generator` (CPU), in that order."""
        ids, choices = inputs["input_ids"], inputs["num_choices"]
        batch = ids.shape[0] // choices
        regions = inputs["regions"]
        real = inputs["token_spans"][..., 0] >= 0
        masked, selected = mask_tokens(
            ids,
            real,
            generator,
            vocab_size=len(self.tokenizer),
            mask_id=self.tokenizer.mask_token_id,
        )
        hidden = self.encode(
            {**inputs, "input_ids": masked}, regions, image_of(batch, choices, ids.device)
        )
        text = hidden[:, : ids.shape[1]]
        losses = {
            "mlm": F.cross_entropy(self.cls.predictions(text[selected]), ids[selected])
            if selected.any()
            else text.sum() * 0.0
        }
        rows = [b for b, ex in enumerate(examples) if ex.label_free_text is not None]
        zero = self.itm_output.weight.sum() * 0.0
        if not rows:
            return {**losses, "itm": zero, **({"mrfr": zero} if self.config.mrfr else {})}
        image, matched = itm_pairs([ex.image_id for ex in examples], rows, generator)
        pair = self._texts([examples[b].label_free_text for b in rows])
        pooled = self.uniter.pooler(self.encode(pair, regions, image.to(self.device)))
        losses["itm"] = F.cross_entropy(self.itm_output(pooled), matched.long().to(self.device))
        if self.config.mrfr:
            losses["mrfr"] = self._mrfr(pair, regions, torch.tensor(rows), generator)
        return losses

    def _texts(self, texts) -> dict[str, torch.Tensor]:
        arrays = pad(self.text_input.texts(texts), self.tokenizer.pad_token_id)
        return {k: torch.from_numpy(v).to(self.device) for k, v in arrays.items()}

    def _mrfr(
        self,
        text: Mapping[str, torch.Tensor],
        regions: RegionInputs,
        rows: torch.Tensor,
        generator: torch.Generator,
    ) -> torch.Tensor:
        """Masked region feature regression (UNITER's MRFR): 15% of each image's real regions
        (at least one) masked, their input features zeroed, the originals regressed."""
        real = regions.mask.cpu()
        draw = torch.rand(real.shape, generator=generator)
        chosen = (draw < 0.15) & real
        first = torch.where(real, draw, 2.0).argmin(dim=1)
        none = ~chosen.any(dim=1) & real.any(dim=1)
        chosen[none, first[none]] = True
        chosen = chosen.to(self.device)
        feat = regions.feat.masked_fill(chosen[..., None], 0.0)
        rows = rows.to(self.device)
        hidden = self.encode(
            text, RegionInputs(feat, regions.boxes, regions.mask), rows, masked=chosen
        )
        picked = chosen[rows]
        if not picked.any():
            return hidden.sum() * 0.0
        states = hidden[:, text["input_ids"].shape[1] :][picked]
        return F.mse_loss(self.feat_regress(states), regions.feat[rows][picked])

    # ------------------------------------------------------------------ saving

    def export_options(self, directory: Path) -> dict[str, Any]:
        """Options that rebuild the student (`save_student`): the resolved model config, the
        tokenizer written to `directory/tokenizer`."""
        return exported_options(
            self.config,
            self.tokenizer,
            directory,
            checkpoint=None,
            config_json=None,
            model_config=self.model_config,
        )


# ----------------------------------------------------------------------------- loading


def load_released(student: UniterStudent, state: Mapping[str, torch.Tensor], path: Path) -> str:
    """Load a converted state dict into `student`. A missing body weight, an unknown key or a
    shape that does not fit is an error naming them (one line); heads the file lacks start
    random and heads of another task are left out: the returned report says which."""
    own = student.state_dict()
    wrong_task = "vqa_output." if student.task == "multiple_choice" else "vcr_output."
    ignored = sorted(k for k in state if k.startswith(UNUSED + (wrong_task,)))
    unknown = sorted(k for k in state if k not in own and k not in ignored)
    misfit = [
        f"{k} {tuple(v.shape)} vs {tuple(own[k].shape)}"
        for k, v in state.items()
        if k in own and v.shape != own[k].shape
    ]
    new_head = [k for k in misfit if k.startswith("vqa_output.")]
    misfit = [k for k in misfit if k not in new_head]
    missing = sorted(k for k in own if k not in state)
    body_missing = [k for k in missing if not k.startswith(HEADS)]
    if unknown or misfit or body_missing:
        parts = [
            f"{label} {key_list(keys)}"
            for label, keys in (
                ("missing", body_missing),
                ("unexpected", unknown),
                ("wrong shape", misfit),
            )
            if keys
        ]
        raise CheckpointCorruptError(
            f"uniter: {path} does not fit the UNITER architecture: "
            f"{'; '.join(parts)}; pass a UNITER / VILLA state dict "
            "(uniter-base.pt, villa-large.pt, *-vcr_2nd_stage.pt ...)"
        )
    skip = {k.split(" ")[0] for k in new_head}
    student.load_state_dict(
        {k: v for k, v in state.items() if k in own and k not in skip}, strict=False
    )
    random = sorted({k.rsplit(".", 1)[0] for k in missing} | {k.rsplit(".", 1)[0] for k in skip})
    report = f"uniter: loaded {path} ({len(state) - len(ignored) - len(skip)} tensors)"
    if random:
        report += f"; new, random init: {key_list(random)}"
    if ignored:
        report += f"; not used: {key_list(ignored)}"
    return report


def uniter(**options: Any) -> UniterStudent:
    """Build the student from `--student-option` values (see `UniterStudentConfig`)."""
    from madcache.students.tokens import load_tokenizer

    config = UniterStudentConfig.from_options(options)
    if config.tokenizer_dir is None:
        raise ConfigError(
            "uniter needs tokenizer_dir=DIR: a local bert-base-cased directory "
            "(vocab.txt / tokenizer.json), the vocabulary UNITER was trained with"
        )
    tokenizer = load_tokenizer(config.tokenizer_dir)
    if config.model_config is not None:  # a saved student: weights come later
        student = UniterStudent(config, tokenizer, config.model_config)
    else:
        path = Path(config.checkpoint).expanduser()
        state = read_checkpoint(path, vcr=config.task == "multiple_choice", seed=config.seed)
        given = read_config_json(config.config_json) if config.config_json else None
        student = UniterStudent(config, tokenizer, released_config(state, given))
        student.load_report = load_released(student, state, path)
        LOG.warning(student.load_report)
    if config.region_dim is not None and config.region_dim != student.model_config["img_dim"]:
        raise ConfigError(
            f"uniter: the region store's features have {config.region_dim} dims "
            f"but {config.checkpoint or 'the student'} reads "
            f"{student.model_config['img_dim']}-d ones (img_linear): build the "
            "region store with the detector's features of that width"
        )
    return student


def read_config_json(path: str) -> dict[str, Any]:
    """UNITER's config JSON (`config/uniter-base.json`); a missing or unreadable file is one
    error line naming it."""
    if not Path(path).is_file():
        raise CheckpointNotFoundError(
            f"uniter: config_json {path} not found; pass UNITER's "
            "config (config/uniter-base.json or uniter-large.json)"
        )
    config = read_json(path, hint="pass UNITER's config (config/uniter-base.json)")
    if not isinstance(config, dict):
        raise CheckpointCorruptError(f"uniter: config_json {path} is not a JSON object")
    return config


def read_checkpoint(path: Path, *, vcr: bool, seed: int) -> dict[str, torch.Tensor]:
    """A released `.pt` (torch.load weights_only=True; a `{"model_state": ...}` wrapper as
    inf_vcr.py reads it is unwrapped) converted by `convert_state_dict`."""
    released = load_weights(path, what="uniter checkpoint")
    if isinstance(released, dict) and isinstance(released.get("model_state"), dict):
        released = released["model_state"]
    if not isinstance(released, dict) or not all(
        isinstance(v, torch.Tensor) for v in released.values()
    ):
        raise CheckpointCorruptError(
            f"uniter: {path} is not a state dict of tensors; pass a "
            "released UNITER / VILLA .pt file"
        )
    absent = [k for k in BODY if k not in renamed(released)]
    if absent:
        raise CheckpointCorruptError(
            f"uniter: {path} does not fit the UNITER architecture: "
            f"missing {key_list(absent)}; pass a UNITER / VILLA state "
            "dict (uniter-base.pt, villa-large.pt, ...)"
        )
    return convert_state_dict(released, vcr=vcr, generator=torch.Generator().manual_seed(seed))


uniter.visual_input = "regions"
