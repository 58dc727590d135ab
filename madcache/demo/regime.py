"""The demo's regime, checked before any distillation method runs (`madcache demo run`).

MAD helps in the paper's low-shot regime because the teacher knows more than the labels teach:
CLIP's zero-shot VCR Q2A (54.8) is far above the 0.3% baseline (30.9). A miniature outside that
relation cannot show the method working, whatever the method does. So the demo measures it
first, on the dev split held out of train (`madcache.demo.search.make_dev_root`; val and SM stay
unseen), with the baseline and the teacher alone:

- teacher zero-shot dev Q2A: the arg-max of the cached logits that CW uses (the cache's default
  logits), on the dev questions (they are train questions, so the train cache holds them);
- baseline dev Q2A at each candidate shot size, largest first (the pretrained demo student,
  the demo's training settings, `seeds` seeds).

The demo runs at the largest shot size whose baseline stays `margin` points or more below the
teacher. If none does, it runs at the smallest and the report says the precondition failed.
No MD or MAD number is looked at; the choice depends on the baseline and the teacher alone.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from madcache.core import io
from madcache.core.config import read_toml
from madcache.core.errors import ConfigError

METRIC = "q2a"
RESULT = "regime.json"


def load_regime(path: str | Path) -> dict[str, Any]:
    """The check's spec: candidate `shots` (tried largest first), `seeds`, `margin`,
    `dev_fraction`."""
    path = Path(path)
    spec = read_toml(path, what="regime spec")
    for key in ("shots", "seeds", "margin", "dev_fraction"):
        if key not in spec:
            raise ConfigError(f"{path}: missing key '{key}'")
    spec["shots"] = sorted(spec["shots"], reverse=True)
    return spec


def teacher_dev_score(cache_path: str | Path, dev_ids: Sequence[str]) -> dict[str, float]:
    """Q2A of the teacher alone on the dev questions, per stored logits name, with the name
    CW uses (`default`)."""
    from madcache.cache.reader import open_cache
    from madcache.data import DATASETS
    from madcache.evaluation.cached import index_examples
    from madcache.evaluation.zeroshot import logits_zero_shot

    cache = open_cache(cache_path)
    wanted = set(dev_ids)
    examples = [ex for ex in index_examples(cache) if ex.group in wanted]
    targets = cache.load_targets([ex.id for ex in examples])
    qa = [i for i, ex in enumerate(examples) if ex.id.endswith(":qa")]
    scores = logits_zero_shot(
        [examples[i] for i in qa],
        {name: logits[qa] for name, logits in targets.logits.items()},
        DATASETS.get("vcr").score,
    )
    out = {name: result["overall"][METRIC] for name, result in scores.items()}
    return {**out, "default": targets.default_logits or sorted(out)[0]}


def dev_question_ids(dev_root: Path) -> list[str]:
    lines = (dev_root / "val.jsonl").read_text(encoding="utf-8").splitlines()
    return [json.loads(line)["annot_id"] for line in lines if line.strip()]


def check_regime(
    demo_out: Path,
    *,
    pipeline: Any,
    base: Mapping[str, Any],
    cache: Path,
    spec: Mapping[str, Any],
    jobs: int = 2,
    progress: bool = True,
    log: Callable[[str], None] = print,
    directory: Path | None = None,
    eval_every: int = 0,
) -> dict[str, Any]:
    """Measure the preconditions (or reuse `<directory>/regime.json`, default
    `<out>/regime/`) and choose the shots. `eval_every`: the baseline runs' validations (a
    `[train]` table with select = "best" needs them: its dev score is then the best step's)."""
    from madcache.demo.search import make_dev_root, point_pipeline
    from madcache.experiments.sweep import from_dict, run_sweep

    demo_out = Path(demo_out).resolve()  # the sweep takes relative paths from its folder
    regime_dir = Path(directory).resolve() if directory is not None else demo_out / "regime"
    done = regime_dir / RESULT
    if done.is_file():
        return json.loads(done.read_text(encoding="utf-8"))
    dev_root = Path(demo_out) / "search" / "dev" / "vcr"
    counts = make_dev_root(
        Path(demo_out) / "world" / "vcr", dev_root, fraction=spec["dev_fraction"]
    )
    teacher = teacher_dev_score(cache, dev_question_ids(dev_root))
    target = teacher[teacher["default"]]
    log(
        f"[regime] teacher zero-shot dev Q2A: {target:.2f} ({teacher['default']} logits, the "
        f"ones CW uses); {counts['dev']} dev questions"
    )
    tried = []
    for shots in spec["shots"]:
        data = point_pipeline(
            base,
            {},
            {"shots": [shots], "seeds": spec["seeds"], "eval_every": eval_every},
            root=dev_root,
            regions=Path(demo_out) / "regions",
            out=regime_dir / "runs",
        )
        sweep = run_sweep(from_dict(data, base=regime_dir), jobs=jobs, progress=progress)
        if sweep.failed:
            raise ConfigError(
                f"regime check: a baseline run failed; see {sweep.failed[0][0].run_dir}/sweep.log"
            )
        finals = [_final_dev(s.run_dir) for s in sweep.planned]
        mean = sum(finals) / len(finals)
        tried.append(
            {
                "shots": shots,
                "baseline_dev": finals,
                "baseline_mean": mean,
                "gap": target - mean,
                "met": target - mean >= spec["margin"],
            }
        )
        log(
            f"[regime] baseline k{shots} dev Q2A {mean:.2f} (seeds {spec['seeds']}): teacher "
            f"{'leads' if target > mean else 'trails'} by {abs(target - mean):.2f}; needed "
            f"a lead of {spec['margin']}"
        )
        if tried[-1]["met"]:
            break
    chosen = next((t for t in tried if t["met"]), tried[-1])
    result = {
        "metric": METRIC,
        "split": "dev (held out of train)",
        "dev_questions": counts["dev"],
        "teacher": teacher,
        "teacher_dev": target,
        "margin": spec["margin"],
        "seeds": spec["seeds"],
        "tried": tried,
        "shots": chosen["shots"],
        "met": chosen["met"],
    }
    io.write_json(done, result)
    io.atomic_write_text(regime_dir / "regime.md", regime_markdown(result))
    return result


def _final_dev(run_dir: Path) -> float:
    metrics = json.loads((Path(run_dir) / "metrics.json").read_text(encoding="utf-8"))
    return metrics["eval"]["val"][METRIC]


def regime_markdown(result: Mapping[str, Any]) -> str:
    """The preconditions table of the report."""
    lines = [
        f"Teacher zero-shot dev Q2A: **{result['teacher_dev']:.2f}** "
        f"({result['teacher']['default']} logits, those CW uses; chance 25). Required: "
        f"the baseline at least {result['margin']:g} points below it.",
        "",
        "| shots per category | baseline dev Q2A (seeds) | mean | teacher lead | met |",
        "|---|---|---|---|---|",
    ]
    for t in result["tried"]:
        seeds = ", ".join(f"{v:.1f}" for v in t["baseline_dev"])
        lines.append(
            f"| {t['shots']} | {seeds} | {t['baseline_mean']:.2f} | "
            f"{t['gap']:+.2f} | {'yes' if t['met'] else 'no'} |"
        )
    verdict = (
        f"The demo runs at **k = {result['shots']}**."
        if result["met"]
        else f"**No candidate met the precondition**; the demo runs at k = {result['shots']} "
        "and its MD/MAD rows are outside the paper's regime."
    )
    return "\n".join(lines) + "\n\n" + verdict + "\n"
