"""The method registry: which loss terms a training run turns on (docs/method.md).

A method is data: the distillation terms (MAD.md: L_dv, L_dt, L'_dt), confidence weighting and
the word-selection rule. `needs` lists the cached targets it requires; `check_targets` raises a
`MissingTargetError` naming the target and the cache when one is absent.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from madcache.cache.targets import Targets
from madcache.core.errors import MissingTargetError
from madcache.core.registry import Registry


@dataclass(frozen=True)
class Method:
    name: str
    vision: bool = False                  # L_dv = ||V_t - P_v(V_s)||_1
    text: bool = False                    # L_dt = ||T_t - P_t(T_s)||_1
    words: bool = False                   # TS: L'_dt over the m selected words
    confidence: bool = False              # CW: per-instance w_r replaces w'
    selection: Literal["top", "random"] = "top"
    adaptive: bool = False                # MAD family: weight w' = w (2 + m) / 2 (m = 0 without TS)

    @property
    def distils(self) -> bool:
        return self.vision or self.text or self.words

    @property
    def needs(self) -> tuple[str, ...]:
        """The cached targets this method reads (baseline: none)."""
        wanted = [("image", self.vision), ("text_eos", self.text), ("words", self.words),
                  ("logits", self.confidence)]
        return tuple(name for name, on in wanted if on)

    def weight(self, *, w: float, w_prime: float) -> float:
        """The distillation weight: w for MD, w' for MAD with TS, w(2 + 0)/2 = w without TS."""
        return w_prime if (self.adaptive and self.words) else w


METHODS: Registry[Method] = Registry("method")
for _method in (
    Method("baseline"),
    Method("md", vision=True, text=True),
    Method("md-vision", vision=True),
    Method("md-text", text=True),
    Method("mad", vision=True, text=True, words=True, confidence=True, adaptive=True),
    Method("mad-no-cw", vision=True, text=True, words=True, adaptive=True),
    Method("mad-no-ts", vision=True, text=True, confidence=True, adaptive=True),
    Method("mad-random", vision=True, text=True, words=True, confidence=True, selection="random",
           adaptive=True),
):
    METHODS.register(_method.name, _method)


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
        if method.words and method.selection == "top":
            why.append("token selection needs word_vr / word_score")
        if why:
            reasons[name] = "; ".join(why)
    return reasons


def check_targets(method: Method, targets: Targets, *, cache: str, logits: str | None = None) -> None:
    """Raise `MissingTargetError` if `targets` lacks something `method` needs."""
    for need in method.needs:
        if need == "logits":
            missing = not targets.logits or (logits is not None and logits not in targets.logits)
            what = f"teacher logits '{logits}'" if logits else "teacher logits"
        else:
            missing = getattr(targets, need) is None
            what = {"image": "image features (V_t)", "text_eos": "text features (T_t)",
                    "words": "per-word features"}[need]
        if need == "words" and not missing and method.selection == "top":
            scores = targets.words.score
            missing = scores.size > 0 and bool(np.isnan(scores).all())
            what = "word selection scores (word_score; extracted without a relevance model)"
        if missing:
            raise MissingTargetError(
                f"method '{method.name}' needs {what} but the cache {cache} has none; "
                f"re-extract with a teacher that provides them or pick another method")
