"""One process of a torchrun job for tests/train/test_distributed.py (not a test module).

    python -m torch.distributed.run --standalone --nproc-per-node 2 ddp_worker.py OUT OPTIONS

Trains the stand-in setup of standins.py (`make_setup(OUT / "work", **OPTIONS)`) with the real
`train` under DDP (gloo), and writes what this rank saw to OUT/rank<R>.json: the sizes of the
eval shares it predicted, whether it saved checkpoints, a digest of its final weights, and the
metrics `train` returned. OPTIONS may also hold `dropout` (default 0.2), `crash_at_call` (rank
1 exits hard at that call of `StageLoss.forward`, as a killed process would), `sleep` (seconds
per loss call, to give a test time to signal) and `device` ("cuda": NCCL,
tests/train/test_gpu.py). Each rank writes its pid to OUT/pid<R> and its count of loss calls to
OUT/calls<R>; a signal's `Preempted` stop exits 75 after writing OUT/rank<R>.stopped.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist


def load_standins():
    """The stand-ins of standins.py, through tests/train/conftest.py (loaded by path)."""
    spec = importlib.util.spec_from_file_location(
        "train_conftest", Path(__file__).with_name("conftest.py")
    )
    conftest = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(conftest)
    return conftest.load_standins()


def train_standin(out: Path, options: dict, *, dropout: float) -> dict:
    """`train` on `make_setup(out / "work", **options)` with the stand-in's dropout set."""
    from madcache.train import loop

    setup = load_standins().make_setup(out / "work", **options)
    setup.student.drop.p = dropout
    return loop.train(setup)


def main() -> None:
    out, options = Path(sys.argv[1]), json.loads(sys.argv[2])
    from madcache.train import loop
    from madcache.train.distributed import init_distributed, shutdown
    from madcache.train.preemption import Preempted

    torch.set_num_threads(1)
    device = options.get("device", "cpu")  # "cuda": NCCL, each rank its LOCAL_RANK's GPU
    started = init_distributed(device)
    rank = dist.get_rank() if dist.is_initialized() else 0
    dropout = options.pop("dropout", 0.2)
    crash = options.pop("crash_at_call", None)
    sleep = options.pop("sleep", 0.0)
    (out / f"pid{rank}").write_text(str(os.getpid()))
    seen = {"eval_sizes": [], "saved": 0}
    real_loss, real_predict = loop.StageLoss.forward, loop.predict_logits
    real_save = loop.save_checkpoint

    def loss_step(*args, **kwargs):
        seen["calls"] = seen.get("calls", 0) + 1
        (out / f"calls{rank}").write_text(str(seen["calls"]))
        if rank == 1 and seen["calls"] == crash:
            os._exit(3)
        time.sleep(sleep)
        return real_loss(*args, **kwargs)

    def predict_logits(student, examples, **kwargs):
        seen["eval_sizes"].append(len(examples))
        return real_predict(student, examples, **kwargs)

    def save_checkpoint(*args, **kwargs):
        seen["saved"] += 1
        return real_save(*args, **kwargs)

    loop.StageLoss.forward, loop.predict_logits, loop.save_checkpoint = (
        loss_step,
        predict_logits,
        save_checkpoint,
    )
    setup = load_standins().make_setup(out / "work", **options)
    setup.student.drop.p = dropout
    if device != "cpu":  # the stand-in's inputs stay on the CPU: no validation on a GPU
        setup.student.to(device)
        setup.projections.to(device)
        setup.eval_examples = []
    try:
        metrics = loop.train(setup)
    except Preempted as exc:  # a signal: the checkpoint is written, exit 75
        (out / f"rank{rank}.stopped").write_text(str(exc))
        shutdown(started)
        sys.exit(exc.exit_code)
    digest = hashlib.sha256()
    for key, value in sorted(setup.student.state_dict().items()):
        digest.update(key.encode() + value.detach().cpu().numpy().tobytes())
    (out / f"rank{rank}.json").write_text(
        json.dumps({**seen, "weights": digest.hexdigest(), "metrics": metrics})
    )
    shutdown(started)


if __name__ == "__main__":
    main()
