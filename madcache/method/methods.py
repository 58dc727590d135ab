"""The method registry: each method says which training stages it has and what each stage
optimises (docs/method.md). A new method is one `Method(...)` entry in `METHODS`; a new
distillation term is a function in `madcache.method.losses` plus its `TERMS` entry, whose
declared needs decide the rest (the targets loaded, the projections trained).

A method is data. Its `stages` run in order: `af` (adaptive finetuning: the student's label-free
MLM + ITM losses on the whole training split) and/or `task` (the task loss on the training set,
low-shot or full). Each stage adds distillation `terms` (MAD.md: `dv` = L_dv, `dt` = L_dt,
`dwt` = L'_dt over the selected words) with the weight `w` (MD) or `w'` (MAD), or per instance
with confidence weighting (CW). `needs` lists the cached targets a method reads (its terms'
`Term.needs`, and the teacher logits for CW);
`check_targets` raises a `MissingTargetError` naming the target and the cache when one is absent.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, Literal

import numpy as np
import torch

from madcache.cache.targets import Targets
from madcache.core.errors import MissingTargetError
from madcache.core.registry import Registry
from madcache.method.losses import TERMS, candidate_logits, confidence_weights

AF, TASK = "af", "task"
STAGE_ORDER = (AF, TASK)

# The two readings of MAD's "proportionally updated" w' (docs/method.md, "w'"); `m` is the number
# of selected words the stage distils (0 without TS).
W_PRIME_RULES: dict[str, Callable[[float, int], float]] = {
    "proportional": lambda w, m: w * (2 + m) / 2,  # MAD.md: w scaled by (2 + m) features / MD's 2
    "per-feature": lambda w, m: w * (m + 2),  # supplement "0.05, Token#+2": w per feature
}


@dataclass(frozen=True)
class Stage:
    """One training stage of a method: `name` ("af" or "task"), the distillation `terms` added to
    the stage's own loss, their `weight` ("w" or "w_prime") and whether CW replaces that weight
    per instance (`confidence`)."""

    name: str
    terms: tuple[str, ...] = ()
    weight: Literal["w", "w_prime"] = "w"
    confidence: bool = False

    def __post_init__(self) -> None:
        unknown = [t for t in self.terms if t not in TERMS]
        if self.name not in STAGE_ORDER or unknown:
            raise ValueError(
                f"stage {self.name!r} (valid: {STAGE_ORDER}) with unknown terms "
                f"{unknown} (valid: {sorted(TERMS)})"
            )


def task(*terms: str, weight: Literal["w", "w_prime"] = "w", confidence: bool = False) -> Stage:
    return Stage(TASK, terms, weight, confidence)


def adaptive_finetuning(*terms: str) -> Stage:
    """The AF stage: MLM + ITM + w (the given terms) (MAD.md, "Adaptive finetuning")."""
    return Stage(AF, terms)


@dataclass(frozen=True)
class Method:
    """A training recipe: its stages in order, and how TS picks words (`top` / `random`).
    `paper` names the row of the paper's Table 2 / S3 it reproduces."""

    name: str
    stages: tuple[Stage, ...]
    selection: Literal["top", "random"] = "top"
    paper: str = ""

    def __post_init__(self) -> None:
        names = [s.name for s in self.stages]
        if names != [n for n in STAGE_ORDER if n in names]:
            raise ValueError(
                f"method {self.name}: stages {names} must be a subsequence of {STAGE_ORDER}"
            )

    def stage(self, name: str) -> Stage | None:
        return next((s for s in self.stages if s.name == name), None)

    @property
    def stage_names(self) -> tuple[str, ...]:
        return tuple(s.name for s in self.stages)

    def only(self, name: str) -> Method:
        """This method restricted to one stage (what that stage's data loader must load)."""
        return replace(self, stages=tuple(s for s in self.stages if s.name == name))

    @property
    def terms(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(t for s in self.stages for t in s.terms))

    def reads(self, target: str) -> bool:
        """Whether the method loads the cached `target` ("image", "text_eos", "words",
        "logits")."""
        return target in self.needs

    @property
    def distils_words(self) -> bool:
        """Whether a term distils TS's selected words (then `m` words are selected)."""
        return any(TERMS.get(t).selects_words for t in self.terms)

    @property
    def confidence(self) -> bool:
        return any(s.confidence for s in self.stages)

    @property
    def distils(self) -> bool:
        return bool(self.terms)

    @property
    def needs(self) -> tuple[str, ...]:
        """The cached targets this method reads (baseline: none)."""
        found = [TERMS.get(t).needs for t in self.terms] + (["logits"] if self.confidence else [])
        return tuple(dict.fromkeys(found))


def stage_weight(
    stage: Stage,
    *,
    w: float,
    m: int,
    w_prime: float | None = None,
    w_prime_rule: str = "proportional",
) -> float:
    """The distillation weight of a stage: `w`, or `w'` (set, or by `w_prime_rule` from w and
    the number of distilled words: m with TS, 0 without)."""
    if stage.weight == "w":
        return w
    if w_prime is not None:
        return w_prime
    words = any(TERMS.get(t).selects_words for t in stage.terms)
    return W_PRIME_RULES[w_prime_rule](w, m if words else 0)


# CW's loss parts: per-batch counts that add up over micro-batches and ranks (every other part
# is a mean); a run's tracker and history show their ratio, the firing rate.
COUNTS = ("cw_fired", "cw_seen")


def term_weights(
    stage: Stage,
    out: Any,
    targets: Any,
    *,
    w: float,
    m: int,
    w_prime: float | None = None,
    w_prime_rule: str = "proportional",
) -> tuple[torch.Tensor | float, dict[str, float]]:
    """The weight of a stage's distillation terms: `stage_weight`, or with CW (`confidence`)
    w_r per instance [B] (0 where the student is the surer: MAD.md, "Confidence weighting"),
    with CW's counts (`COUNTS`) for the run's firing rate."""
    weight = stage_weight(stage, w=w, m=m, w_prime=w_prime, w_prime_rule=w_prime_rule)
    if not stage.confidence:
        return weight, {}
    weights = confidence_weights(targets.logits, candidate_logits(out, targets), weight)
    return weights, {
        "cw_fired": float((weights > 0).sum().item()),
        "cw_seen": float(weights.numel()),
    }


def logged(parts: dict[str, float]) -> dict[str, float]:
    """A step's scalars for the tracker and the history: CW's counts become its firing rate."""
    out = {k: v for k, v in parts.items() if k not in COUNTS}
    if parts.get("cw_seen"):
        out["cw_fired"] = parts["cw_fired"] / parts["cw_seen"]
    return out


MD_TERMS = ("dv", "dt")
TS_TERMS = ("dv", "dt", "dwt")
MAD_TASK = task(*TS_TERMS, weight="w_prime", confidence=True)
MAD_AF = adaptive_finetuning(*MD_TERMS)

# In the order of the paper's Table 2 / S3 (reports list methods in this order).
REGISTERED = (
    Method("baseline", (task(),), paper="Baseline"),
    Method("md-vision", (task("dv"),), paper="Unimodal distillation (V.)"),
    Method("md-text", (task("dt"),), paper="Unimodal distillation (L.)"),
    Method("md", (task(*MD_TERMS),), paper="Multimodal distillation (V. + L.)"),
    Method("md-ts", (task(*TS_TERMS, weight="w_prime"),), paper="+ TS (V. L. TS)"),
    Method(
        "md-ts-random",
        (task(*TS_TERMS, weight="w_prime"),),
        selection="random",
        paper="+ TS w/o language prior (random selection)",
    ),
    Method("md-ts-cw", (MAD_TASK,), paper="+ CW (V. L. TS CW), no AF"),
    Method("md-af", (MAD_AF, task(*MD_TERMS)), paper="MD + AF (not a paper row)"),
    Method(
        "mad-af-plain",
        (adaptive_finetuning(), MAD_TASK),
        paper='+ AF w/o distillation (2nd-stage "pretraining")',
    ),
    Method("mad", (MAD_AF, MAD_TASK), paper="MAD: V. L. TS CW AF (AF w/ distillation)"),
    Method("mad-no-cw", (MAD_AF, task(*TS_TERMS, weight="w_prime")), paper="MAD without CW"),
    Method(
        "mad-no-ts",
        (MAD_AF, task(*MD_TERMS, weight="w_prime", confidence=True)),
        paper="MAD without TS",
    ),
    Method(
        "mad-random", (MAD_AF, MAD_TASK), selection="random", paper="MAD with random word selection"
    ),
)
METHODS: Registry[Method] = Registry("method", group="madcache.methods")
for _method in REGISTERED:
    METHODS.register(_method.name, _method)
METHOD_ORDER = tuple(m.name for m in REGISTERED)


def get_method(name: str) -> Method:
    """The registered method; an unknown name lists the valid ones."""
    return METHODS.get(name)


def unavailable_methods(missing: list[str]) -> dict[str, str]:
    """Registered methods that cannot run on a cache without the targets `missing` (a
    manifest's `unavailable` list), with the reason."""
    if not missing:
        return {}
    reasons = {}
    for name in METHODS:
        method = METHODS.get(name)
        why = []
        if method.confidence:
            why.append("confidence weighting needs teacher logits")
        if method.distils_words and method.selection == "top":
            why.append("token selection needs word_vr / word_score")
        if why:
            reasons[name] = "; ".join(why)
    return reasons


def check_targets(
    method: Method, targets: Targets, *, cache: str, logits: str | None = None
) -> None:
    """Raise `MissingTargetError` if `targets` lacks something `method` needs."""
    for need in method.needs:
        if need == "logits":
            missing = not targets.logits or (logits is not None and logits not in targets.logits)
            what = f"teacher logits '{logits}'" if logits else "teacher logits"
        else:
            missing = getattr(targets, need) is None
            what = {
                "image": "image features (V_t)",
                "text_eos": "text features (T_t)",
                "words": "per-word features",
            }.get(need, f"'{need}' targets")
        if need == "words" and not missing and method.selection == "top":
            scores = targets.words.score
            missing = scores.size > 0 and bool(np.isnan(scores).all())
            what = "word selection scores (word_score; extracted without a relevance model)"
        if missing:
            raise MissingTargetError(
                f"method '{method.name}' needs {what} but the cache {cache} has none; "
                f"re-extract with a teacher that provides them or pick another method"
            )
