"""`madcache demo diagnose`: what each part of MAD does to the demo student, measured.

Run after `madcache demo run` (it reuses the world, caches, regions, the pretrained student and
the shot size the regime check chose); not part of the timed demo. It trains the paper's
ablation ladder — baseline, md, md-ts, md-ts-cw, mad-af-plain, mad — for `seeds` seeds with a
record every `every` steps, and measures:

- learning curves: the AF stage's loss (MLM + ITM, and its distillation terms), the task loss
  and val Q2A per step, mean over seeds;
- what each finished student's text side looks like: the input-embedding cosine of the person
  tag pieces `##1` / `##2` / `##3` (VCR's "person1", "person2", ... are `person` + a piece; a
  student that cannot tell them apart cannot tell which person a question is about) and the
  spread of its logits across a question's four answers (std; near 0 = the same score for
  every answer);
- at the start of the task stage (the pretrained student, one low-shot batch), the gradient
  norm of each weighted loss term and its cosine with the task gradient: whether a term is
  too small to matter or pulls against the task.

Nothing here chooses a setting: the demo's settings were fixed before (search.toml, demo.toml,
regime.toml). Outputs under `<out>/diagnosis/`: diagnosis.json, diagnosis.md, curves.png.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from madcache.core import io
from madcache.core.errors import ConfigError

METHODS = ("baseline", "md", "md-ts", "md-ts-cw", "mad-af-plain", "mad")
TAG_PIECES = ("##1", "##2", "##3")
PROBE_EXAMPLES = 200  # val Q->A questions the logit spread is measured on


def run_diagnosis(
    demo_out: Path,
    *,
    seeds: Sequence[int] = (0, 1),
    every: int = 25,
    jobs: int = 2,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Train the ladder (or reuse its runs), measure, and write the diagnosis."""
    from madcache.demo.run import PIPELINE
    from madcache.experiments.sweep import load_sweep, run_sweep

    demo_out = Path(demo_out).resolve()
    regime_file = demo_out / "regime" / "regime.json"
    if not regime_file.is_file():
        raise ConfigError(
            f"{regime_file} is missing: run `madcache demo run --out {demo_out}` "
            "first (the diagnosis reuses its stages and its shot size)"
        )
    shots = json.loads(regime_file.read_text(encoding="utf-8"))["shots"]
    out = demo_out / "diagnosis"
    pipeline = load_sweep(
        PIPELINE,
        [
            f"DEMO_DIR={demo_out}",
            f"shots=[{shots}]",
            f"seeds={list(seeds)}",
            f"methods={json.dumps(list(METHODS))}",
            f"out={out / 'runs'}",
            'eval=["val"]',
            "zero_shot=false",
            f"train.eval_every={every}",
        ],
    )
    log(
        f"[diagnose] {len(METHODS)} methods x {len(seeds)} seeds at k{shots}, a record every "
        f"{every} steps"
    )
    sweep = run_sweep(pipeline, jobs=jobs, progress=progress)
    if sweep.failed:
        raise ConfigError(f"diagnosis: a run failed; see {sweep.failed[0][0].run_dir}/sweep.log")
    runs = [run_facts(spec.run_dir) for spec in sweep.planned]
    init = Path(pipeline.students[0].options["init_from"])
    summary = {
        "shots": shots,
        "seeds": list(seeds),
        "every": every,
        "init": text_side(init, root=pipeline.root, regions=pipeline.regions, log=log),
        "methods": summarise(runs),
        "gradients": gradient_probe(
            next(r["dir"] for r in runs if r["method"] == "mad" and r["seed"] == seeds[0])
        ),
    }
    io.write_json(out / "diagnosis.json", summary)
    io.atomic_write_text(out / "diagnosis.md", diagnosis_markdown(summary))
    plot_curves(summary, out / "curves.png")
    return summary


# ----------------------------------------------------------------------------- per run


def run_facts(run_dir: Path) -> dict[str, Any]:
    """A finished run's curves and its student's text-side probes."""
    from madcache.train.rundir import load_run

    metrics = json.loads((Path(run_dir) / "metrics.json").read_text(encoding="utf-8"))
    config = load_run(run_dir)
    curves: dict[str, list[tuple[int, float, float | None]]] = {
        "af": [],
        "task": [],
        "af_itm": [],
        "af_mlm": [],
    }
    for h in metrics["history"]:
        curves[h["stage"]].append((h["step"], h["loss"], (h.get("eval") or {}).get("q2a")))
        if h["stage"] == "af":
            for part in ("itm", "mlm"):
                curves[f"af_{part}"].append((h["step"], h["parts"][part], None))
    probes = text_side(
        Path(run_dir) / "student", root=config.root, regions=config.eval_regions or config.regions
    )
    return {
        "dir": str(run_dir),
        "method": metrics["method"],
        "seed": metrics["seed"],
        "final": metrics["eval"]["val"]["q2a"],
        "curves": curves,
        **probes,
    }


def text_side(
    student_dir: Path,
    *,
    root: str | Path,
    regions: str | Path | None,
    log: Callable[[str], None] | None = None,
) -> dict[str, float]:
    """Tag-piece cosine and the logit spread across the answers of the first val questions."""
    from madcache.data import read_examples
    from madcache.students import load_student
    from madcache.students.predict import predict_logits
    from madcache.students.visual import loader_for

    student = load_student(student_dir).eval()
    questions = [ex for ex in read_examples("vcr", root, "val").examples if ex.id.endswith(":qa")][
        :PROBE_EXAMPLES
    ]
    logits = predict_logits(
        student, questions, regions=loader_for(student, root=root, regions=regions), batch_size=32
    )
    result = {
        "tag_cosine": tag_cosine(student),
        "choice_logit_std": float(logits.std(dim=1).mean()),
    }
    if log is not None:
        log(
            f"[diagnose] pretrained student: tag cosine {result['tag_cosine']:.3f}, logit "
            f"std across answers {result['choice_logit_std']:.4f}"
        )
    return result


def tag_cosine(student: Any) -> float:
    """Mean pairwise cosine of the input embeddings of the person-tag pieces."""
    ids = student.tokenizer.convert_tokens_to_ids(list(TAG_PIECES))
    table = student.bert.embeddings.word_embeddings.weight.detach()
    vectors = torch.nn.functional.normalize(table[ids], dim=-1)
    cosines = vectors @ vectors.T
    n = len(ids)
    return float((cosines.sum() - n) / (n * (n - 1)))


def summarise(runs: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Per method: final val Q2A, probes and curves, mean over seeds."""
    out: dict[str, Any] = {}
    for method in METHODS:
        mine = [r for r in runs if r["method"] == method]
        if not mine:
            continue
        out[method] = {
            key: sum(r[key] for r in mine) / len(mine)
            for key in ("final", "tag_cosine", "choice_logit_std")
        }
        out[method]["curves"] = {
            stage: mean_curve([r["curves"][stage] for r in mine])
            for stage in ("af", "task", "af_itm", "af_mlm")
        }
    return out


def mean_curve(curves: Sequence[Sequence[tuple[int, float, float | None]]]) -> list[list[Any]]:
    if not curves or not curves[0]:
        return []
    rows = []
    for i, (step, _, _) in enumerate(curves[0]):
        losses = [c[i][1] for c in curves]
        evals = [c[i][2] for c in curves if c[i][2] is not None]
        rows.append([step, sum(losses) / len(losses), sum(evals) / len(evals) if evals else None])
    return rows


# ----------------------------------------------------------------------------- gradients


def gradient_probe(run_dir: str) -> dict[str, dict[str, float]]:
    """At the pretrained student, on one low-shot batch of the `mad` run: for the task loss
    and each weighted distillation term of `md-ts` (w' (L_dv + L_dt + L'_dt)), the gradient norm
    over the student's parameters and its cosine with the task gradient."""
    import tempfile

    from madcache.method.losses import TERMS, task_loss
    from madcache.method.methods import stage_weight
    from madcache.students.base import to_device
    from madcache.train.rundir import load_run
    from madcache.train.setup import setup

    config = load_run(run_dir)
    with tempfile.TemporaryDirectory() as scratch:
        config.out, config.method = scratch, "md-ts"  # the run's own low-shot split
        built = setup(config)
    student = built.student.eval()
    chunk = built.task_source.chunk(0)
    rows = torch.arange(min(config.batch_size, len(chunk.examples)))
    examples = [chunk.examples[i] for i in rows.tolist()]
    targets = chunk.targets.rows(rows)
    inputs = to_device(student.prepare(examples, built.regions(examples)), "cpu")
    out = student(inputs)
    spec = built.method.stage("task")
    weight = stage_weight(
        spec, w=config.w, m=config.m, w_prime=config.w_prime, w_prime_rule=config.w_prime_rule
    )
    losses = {"task": task_loss(student, out.logits, examples)}
    losses |= {
        name: weight * TERMS.get(name).compute(out, targets, built.projections).mean()
        for name in spec.terms
    }
    params = [p for p in student.parameters() if p.requires_grad]
    grads = {}
    for name, loss in losses.items():
        parts = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
        grads[name] = torch.cat(
            [(g if g is not None else torch.zeros_like(p)).flatten() for g, p in zip(parts, params)]
        )
    task = grads["task"]
    return {
        name: {
            "weight": 1.0 if name == "task" else weight,
            "loss": float(losses[name]),
            "grad_norm": float(g.norm()),
            "cosine_with_task": float(torch.nn.functional.cosine_similarity(g, task, dim=0)),
        }
        for name, g in grads.items()
    }


# ----------------------------------------------------------------------------- output


def diagnosis_markdown(summary: Mapping[str, Any]) -> str:
    init = summary["init"]
    lines = [
        f"Diagnosis at k = {summary['shots']}, seeds {summary['seeds']} (val Q2A; a "
        f"record every {summary['every']} steps).",
        "",
        "| method | final val Q2A | tag-piece cosine | logit std across answers |",
        "|---|---|---|---|",
        f"| (pretrained student, before any task step) | – | {init['tag_cosine']:.3f} | "
        f"{init['choice_logit_std']:.4f} |",
    ]
    for method, row in summary["methods"].items():
        lines.append(
            f"| {method} | {row['final']:.2f} | {row['tag_cosine']:.3f} | "
            f"{row['choice_logit_std']:.4f} |"
        )
    af_rows = [(m, r["curves"]) for m, r in summary["methods"].items() if r["curves"]["af_itm"]]
    if af_rows:
        lines += [
            "",
            "The AF stage (mean over seeds; first and last record; ITM chance is ln 2 = 0.693):",
            "",
            "| method | AF ITM loss | AF MLM loss |",
            "|---|---|---|",
        ]
        for method, curves in af_rows:
            itm, mlm = curves["af_itm"], curves["af_mlm"]
            lines.append(
                f"| {method} | {itm[0][1]:.3f} -> {itm[-1][1]:.3f} | "
                f"{mlm[0][1]:.3f} -> {mlm[-1][1]:.3f} |"
            )
    lines += [
        "",
        "Gradients at the start of the task stage (pretrained student, one low-shot "
        "batch; md-ts terms with their weight w'):",
        "",
        "| term | weight | loss | gradient norm | cosine with the task gradient |",
        "|---|---|---|---|---|",
    ]
    for name, row in summary["gradients"].items():
        lines.append(
            f"| {name} | {row['weight']:g} | {row['loss']:.4f} | "
            f"{row['grad_norm']:.4f} | {row['cosine_with_task']:+.3f} |"
        )
    return "\n".join(lines) + "\n"


def plot_curves(summary: Mapping[str, Any], path: Path) -> Path:
    """AF loss, task loss and val Q2A per step, mean over seeds, one line per method."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    fig, (af_ax, loss_ax, acc_ax) = plt.subplots(1, 3, figsize=(15, 4))
    for method, row in summary["methods"].items():
        af, task = row["curves"]["af_itm"], row["curves"]["task"]
        if af:
            af_ax.plot([s for s, _, _ in af], [v for _, v, _ in af], marker=".", label=method)
        loss_ax.plot([s for s, _, _ in task], [v for _, v, _ in task], marker=".", label=method)
        acc_ax.plot(
            [s for s, _, q in task if q is not None],
            [q for _, _, q in task if q is not None],
            marker=".",
            label=method,
        )
    af_ax.set(xlabel="AF step", ylabel="ITM loss", title="adaptive finetuning: ITM")
    af_ax.axhline(0.6931, color="grey", linestyle=":", label="ln 2")
    loss_ax.set(xlabel="task step", ylabel="task-stage loss", title="task stage: loss")
    acc_ax.set(xlabel="task step", ylabel="val Q2A (%)", title="task stage: val Q2A")
    acc_ax.axhline(25.0, color="grey", linestyle=":", label="chance")
    for ax in (af_ax, loss_ax, acc_ax):
        ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
