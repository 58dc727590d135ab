"""UNITER's network (Chen et al. 2020, `ChenRocks/UNITER` `model/`), written for madcache with the
released checkpoints' parameter names, and the one pure function that maps a released state dict
onto it (`convert_state_dict`). VILLA (Gan et al. 2020) has the same modules and keys: its
adversarial training only adds perturbations to the embeddings' inputs.

    text:    word + position + token type  -> LayerNorm            (UniterTextEmbeddings)
    regions: LN(img_linear(feat)) + LN(pos_linear(7-d box)) + type 1 -> LayerNorm
    encoder: BERT layers (post-LN, erf GELU, additive -10000 attention mask); pooler tanh([CLS])

A sequence is its text tokens followed by its regions (UNITER gathers the regions right after
the *real* text tokens; here they follow the padded text: with the padding masked out of
attention the outputs at real positions are the same).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from madcache.core.errors import CheckpointCorruptError

NUM_OBJECT_TAGS = 81  # train_vcr.py NUM_SPECIAL_TOKENS: VCR's object references
VCR_TYPES = 4  # question 0, region 1, answer 2, rationale 3 (data/vcr.py)
EPS = 1e-12

# the UNITER config JSON's keys (config/uniter-base.json) and what madcache adds to them
CONFIG_KEYS = (
    "vocab_size",
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "intermediate_size",
    "hidden_act",
    "hidden_dropout_prob",
    "attention_probs_dropout_prob",
    "max_position_embeddings",
    "type_vocab_size",
    "initializer_range",
)


def _norm(width: int) -> nn.LayerNorm:
    return nn.LayerNorm(width, eps=EPS)


class TextEmbeddings(nn.Module):
    def __init__(self, c: Mapping[str, Any]) -> None:
        super().__init__()
        self.word_embeddings = nn.Embedding(c["vocab_size"], c["hidden_size"], padding_idx=0)
        self.position_embeddings = nn.Embedding(c["max_position_embeddings"], c["hidden_size"])
        self.token_type_embeddings = nn.Embedding(c["type_vocab_size"], c["hidden_size"])
        self.LayerNorm = _norm(c["hidden_size"])
        self.dropout = nn.Dropout(c["hidden_dropout_prob"])

    def forward(self, ids: torch.Tensor, types: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(ids.shape[1], device=ids.device)[None]
        x = (
            self.word_embeddings(ids)
            + self.position_embeddings(positions)
            + self.token_type_embeddings(types)
        )
        return self.dropout(self.LayerNorm(x))


class ImageEmbeddings(nn.Module):
    def __init__(self, c: Mapping[str, Any]) -> None:
        super().__init__()
        hidden, img_dim = c["hidden_size"], c["img_dim"]
        self.img_linear = nn.Linear(img_dim, hidden)
        self.img_layer_norm = _norm(hidden)
        self.pos_layer_norm = _norm(hidden)
        self.pos_linear = nn.Linear(7, hidden)
        self.mask_embedding = nn.Embedding(2, img_dim, padding_idx=0)
        self.LayerNorm = _norm(hidden)
        self.dropout = nn.Dropout(c["hidden_dropout_prob"])

    def forward(
        self,
        feat: torch.Tensor,
        pos: torch.Tensor,
        type_embedding: torch.Tensor,
        masked: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if masked is not None:  # MRFR: masked regions get the mask embedding's row 1 added
            feat = feat + masked[..., None].to(feat.dtype) * self.mask_embedding.weight[1]
        x = (
            self.img_layer_norm(self.img_linear(feat))
            + self.pos_layer_norm(self.pos_linear(pos))
            + type_embedding
        )
        return self.dropout(self.LayerNorm(x))


class SelfAttention(nn.Module):
    def __init__(self, c: Mapping[str, Any]) -> None:
        super().__init__()
        hidden = c["hidden_size"]
        self.heads = c["num_attention_heads"]
        self.query, self.key, self.value = (nn.Linear(hidden, hidden) for _ in range(3))
        self.p = c["attention_probs_dropout_prob"]

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        n, length, hidden = x.shape

        def split(t: torch.Tensor) -> torch.Tensor:
            return t.view(n, length, self.heads, hidden // self.heads).transpose(1, 2)

        query = split(self.query(x))
        out = F.scaled_dot_product_attention(
            query,
            split(self.key(x)),
            split(self.value(x)),
            attn_mask=bias.to(query.dtype),
            dropout_p=self.p if self.training else 0.0,
        )
        return out.transpose(1, 2).reshape(n, length, hidden)


class DenseNorm(nn.Module):
    """dense -> dropout -> LayerNorm(+ residual): BERT's SelfOutput / Output."""

    def __init__(self, width_in: int, c: Mapping[str, Any]) -> None:
        super().__init__()
        self.dense = nn.Linear(width_in, c["hidden_size"])
        self.LayerNorm = _norm(c["hidden_size"])
        self.dropout = nn.Dropout(c["hidden_dropout_prob"])

    def forward(self, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.dropout(self.dense(x)) + residual)


class Attention(nn.Module):
    def __init__(self, c: Mapping[str, Any]) -> None:
        super().__init__()
        self.self = SelfAttention(c)
        self.output = DenseNorm(c["hidden_size"], c)

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        return self.output(self.self(x, bias), x)


class Intermediate(nn.Module):
    def __init__(self, c: Mapping[str, Any]) -> None:
        super().__init__()
        self.dense = nn.Linear(c["hidden_size"], c["intermediate_size"])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.gelu(self.dense(x))


class Layer(nn.Module):
    def __init__(self, c: Mapping[str, Any]) -> None:
        super().__init__()
        self.attention = Attention(c)
        self.intermediate = Intermediate(c)
        self.output = DenseNorm(c["intermediate_size"], c)

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        x = self.attention(x, bias)
        return self.output(self.intermediate(x), x)


class Encoder(nn.Module):
    def __init__(self, c: Mapping[str, Any]) -> None:
        super().__init__()
        self.layer = nn.ModuleList(Layer(c) for _ in range(c["num_hidden_layers"]))

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        for layer in self.layer:
            x = layer(x, bias)
        return x


class Pooler(nn.Module):
    def __init__(self, c: Mapping[str, Any]) -> None:
        super().__init__()
        self.dense = nn.Linear(c["hidden_size"], c["hidden_size"])

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.dense(hidden[:, 0]))


class UniterModel(nn.Module):
    """`uniter.*` of the released files. `config` is UNITER's config JSON plus `img_dim`."""

    def __init__(self, config: Mapping[str, Any]) -> None:
        super().__init__()
        self.config = dict(config)
        self.embeddings = TextEmbeddings(config)
        self.img_embeddings = ImageEmbeddings(config)
        self.encoder = Encoder(config)
        self.pooler = Pooler(config)

    def embed_regions(
        self, feat: torch.Tensor, boxes7: torch.Tensor, masked: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Region embeddings [B, R, H] (once per image; `boxes7` the 7-d box geometry)."""
        region_type = self.embeddings.token_type_embeddings(
            torch.ones(feat.shape[:2], dtype=torch.long, device=feat.device)
        )
        return self.img_embeddings(feat, boxes7, region_type, masked)

    def forward(
        self,
        ids: torch.Tensor,
        types: torch.Tensor,
        text_mask: torch.Tensor,
        regions: torch.Tensor,
        region_mask: torch.Tensor,
    ) -> torch.Tensor:
        """Hidden states [N, L + R, H]: L (padded) text tokens, then R (padded) embedded
        regions (`embed_regions`, one row per sequence)."""
        text = self.embeddings(ids, types)
        mask = torch.cat([text_mask, region_mask], dim=1).to(text.dtype)
        bias = ((1.0 - mask) * -10000.0)[:, None, None, :]
        return self.encoder(torch.cat([text, regions], dim=1), bias)


def answer_head(hidden: int, out: int, act: nn.Module) -> nn.Sequential:
    """`vcr_output` (ReLU, 2 outputs) and `vqa_output` (GELU; VE 3, VQA the answers)."""
    return nn.Sequential(
        nn.Linear(hidden, hidden * 2), act, _norm(hidden * 2), nn.Linear(hidden * 2, out)
    )


class MlmHead(nn.Module):
    """`cls.predictions`: transform (dense, GELU, LayerNorm), decoder tied to the word
    embedding, and its own bias."""

    def __init__(self, c: Mapping[str, Any], word_embeddings: nn.Embedding) -> None:
        super().__init__()
        self.transform = nn.Module()
        self.transform.dense = nn.Linear(c["hidden_size"], c["hidden_size"])
        self.transform.LayerNorm = _norm(c["hidden_size"])
        self.word_embeddings = [word_embeddings]  # a reference, not a submodule
        self.bias = nn.Parameter(torch.zeros(c["vocab_size"]))

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        x = self.transform.LayerNorm(F.gelu(self.transform.dense(hidden)))
        return F.linear(x, self.word_embeddings[0].weight, self.bias)


class FeatRegression(nn.Module):
    """`feat_regress` (MRFR): net (dense, GELU, LayerNorm), then the transpose of `img_linear`
    (tied) plus its own bias, back to the region feature width."""

    def __init__(self, c: Mapping[str, Any], img_linear: nn.Linear) -> None:
        super().__init__()
        hidden = c["hidden_size"]
        self.net = nn.Sequential(nn.Linear(hidden, hidden), nn.GELU(), _norm(hidden))
        self.img_linear = [img_linear]
        self.bias = nn.Parameter(torch.zeros(c["img_dim"]))

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return F.linear(self.net(hidden), self.img_linear[0].weight.t(), self.bias)


# ----------------------------------------------------------------------------- checkpoints

# keys the released files hold twice (tied weights): dropped, their twin is loaded
TIED = {
    "cls.predictions.decoder.weight": "uniter.embeddings.word_embeddings.weight",
    "feat_regress.weight": "uniter.img_embeddings.img_linear.weight",
}
# heads madcache does not use (MRC needs the detector's class distribution): never an error
UNUSED = ("region_classifier.",)
HEADS = ("vcr_output.", "vqa_output.", "cls.", "itm_output.", "feat_regress.")


def released_config(
    state: Mapping[str, torch.Tensor], given: Mapping[str, Any] | None
) -> dict[str, Any]:
    """UNITER's config (the JSON if given) with `img_dim`, sizes checked against the weights;
    without a JSON the sizes come from the weights and heads = hidden / 64 (base 12, large 16)."""
    word = state["uniter.embeddings.word_embeddings.weight"]
    hidden = word.shape[1]
    layers = 1 + max(int(k.split(".")[3]) for k in state if k.startswith("uniter.encoder.layer."))
    found = {
        "hidden_size": hidden,
        "num_hidden_layers": layers,
        "intermediate_size": state["uniter.encoder.layer.0.intermediate.dense.weight"].shape[0],
        "max_position_embeddings": state["uniter.embeddings.position_embeddings.weight"].shape[0],
    }
    config = {
        "hidden_act": "gelu",
        "hidden_dropout_prob": 0.1,
        "attention_probs_dropout_prob": 0.1,
        "initializer_range": 0.02,
        "num_attention_heads": max(1, hidden // 64),
        **found,
        **dict(given or {}),
    }
    for key, value in found.items():
        if config[key] != value:
            raise CheckpointCorruptError(
                f"uniter: the config JSON says {key}={config[key]} but "
                f"the checkpoint's weights have {value}; pass the "
                "config the checkpoint was trained with (config=FILE)"
            )
    config["vocab_size"] = word.shape[0]
    config["type_vocab_size"] = state["uniter.embeddings.token_type_embeddings.weight"].shape[0]
    config["img_dim"] = state["uniter.img_embeddings.img_linear.weight"].shape[1]
    return {k: config[k] for k in (*CONFIG_KEYS, "img_dim")}


def renamed(released: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """UNITER's `from_pretrained` renames: LayerNorm `gamma`/`beta` -> `weight`/`bias`; a BERT
    checkpoint's `bert.` prefix -> `uniter.` (scripts/convert_ckpt.py)."""
    out = {}
    for key, value in released.items():
        head, _, last = key.rpartition(".")
        last = {"gamma": "weight", "beta": "bias"}.get(last, last)
        key = f"{head}.{last}" if head else last
        if key.startswith("bert."):
            key = "uniter." + key[len("bert.") :]
        out[key] = value
    return out


def convert_state_dict(
    released: Mapping[str, torch.Tensor],
    *,
    vcr: bool,
    generator: torch.Generator,
    initializer_range: float = 0.02,
) -> dict[str, torch.Tensor]:
    """A released UNITER / VILLA state dict -> this port's keys (a pure function).

    Renames (`renamed`), drops the tied duplicates (`TIED`) and, for VCR (`vcr`), extends a
    first-stage checkpoint as train_vcr.py does: `init_type_embedding` (4 token types; types 2
    and 3 start as type 0) and `init_word_embedding` (81 object-tag rows after the vocabulary,
    N(0, initializer_range) from `generator`; the MLM bias gains zeros). A checkpoint already
    extended (`*-vcr_2nd_stage.pt`) is kept as it is."""
    state = {k: v for k, v in renamed(released).items() if k not in TIED}
    if not vcr:
        return state
    types_key = "uniter.embeddings.token_type_embeddings.weight"
    types = state.get(types_key)
    if types is not None and types.shape[0] == 2:  # first stage: both tables extended
        state[types_key] = torch.cat([types, types[:1], types[:1]])
        word_key = "uniter.embeddings.word_embeddings.weight"
        word = state[word_key]
        tags = torch.randn(NUM_OBJECT_TAGS, word.shape[1], generator=generator)
        state[word_key] = torch.cat([word, tags.to(word.dtype) * initializer_range])
        if "cls.predictions.bias" in state:
            bias = state["cls.predictions.bias"]
            state["cls.predictions.bias"] = torch.cat([bias, bias.new_zeros(NUM_OBJECT_TAGS)])
    return state
