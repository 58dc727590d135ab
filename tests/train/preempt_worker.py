"""One training process for tests/train/test_preemption.py (not a test module).

    python preempt_worker.py OUT OPTIONS_JSON

Trains the stand-in setup of standins.py (`make_setup(OUT / "work", **OPTIONS)`) with the real
`train`, in a process of its own so that a test can signal it. Each `StageLoss.forward` call
appends a line to OUT/calls (how far the run got; `sleep` seconds per call, default 0, give a
test time to send its signal). A `Preempted` stop exits with its code (75), as `madcache train` does.
"""

from __future__ import annotations

import importlib.util
import json
import sys
import time
from pathlib import Path

import torch


def load_standins():
    spec = importlib.util.spec_from_file_location(
        "train_conftest", Path(__file__).with_name("conftest.py")
    )
    conftest = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(conftest)
    return conftest.load_standins()


def main() -> int:
    out, options = Path(sys.argv[1]), json.loads(sys.argv[2])
    from madcache.train import loop
    from madcache.train.preemption import Preempted

    torch.set_num_threads(1)
    sleep = options.pop("sleep", 0.0)
    real = loop.StageLoss.forward

    def loss_step(*args, **kwargs):
        with open(out / "calls", "a", encoding="utf-8") as calls:
            calls.write(f"{kwargs['stage']}\n")
        time.sleep(sleep)
        return real(*args, **kwargs)

    loop.StageLoss.forward = loss_step
    try:
        loop.train(load_standins().make_setup(out / "work", **options))
    except Preempted as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
