"""The training data pipeline (train/stream.py): reads per epoch, order, ranks, tokenisation,
errors, and the prefetch threads. Stand-ins come from standins.py."""

from __future__ import annotations

import threading
import time

import pytest
import torch

from madcache.core.errors import MissingTargetError
from madcache.students.base import Preparer
from madcache.train.data import DataSource, epoch_order
from madcache.train.loop import train
from madcache.train.stream import Layout, Prefetcher, StageStream


class CountingLoad:
    """Wraps a source's `load`, counting the examples it is asked for."""

    def __init__(self, load):
        self.load, self.calls = load, []

    def __call__(self, examples):
        self.calls.append([e.id for e in examples])
        return self.load(examples)

    @property
    def rows(self):
        return sum(len(c) for c in self.calls)


def tokenising_student(standins):
    """The stand-in student with the optional tokenise/collate hooks, counting tokenised ids."""

    class TokenisingStudent(standins.TinyStudent):
        def __init__(self):
            super().__init__()
            self.tokenised: list[str] = []

        def tokenise(self, examples):
            self.tokenised.extend(e.id for e in examples)
            return list(examples)

        def collate(self, items, regions):
            return self.prepare(items, regions)

    return TokenisingStudent()


def stream(
    standins,
    source,
    *,
    student=None,
    start=0,
    stop=1000,
    layout=Layout(),
    batch_size=3,
    stage="task",
):
    return StageStream(
        source,
        preparer=Preparer(student or standins.TinyStudent()),
        regions=standins.regions,
        seed=0,
        stage=stage,
        batch_size=batch_size,
        start=start,
        stop=stop,
        layout=layout,
        depth=3,
        pin=False,
    )


def chunked(standins, n, size, load=lambda examples: None):
    examples = standins.make_examples(n)
    return DataSource(examples, [list(range(i, min(i + size, n))) for i in range(0, n, size)], load)


def take(batches, steps):
    return [next(batches) for _ in range(steps)]


def test_each_example_is_read_once_per_epoch_whatever_the_chunk_size(standins, tmp_path):
    """3 chunks (4, 4, 2), batch 2, 3 epochs: the old pipeline read a whole chunk per batch
    (36 rows an epoch); now each example once an epoch."""
    setup = standins.make_setup(tmp_path, method="md", chunk=4, batch_size=2, epochs=3)
    counting = CountingLoad(setup.task_source.load)
    setup.task_source.load = counting
    metrics = train(setup)
    assert counting.rows == 30 and len(counting.calls) == 9
    for epoch in range(3):
        ids = [i for call in counting.calls[3 * epoch : 3 * epoch + 3] for i in call]
        assert sorted(ids) == sorted(e.id for e in setup.task_source.examples)
    assert metrics["training"]["data"]["task"]["rows_read"] == [30]
    assert 0.0 <= metrics["training"]["data"]["task"]["data_wait_share"] < 1.0


def test_a_lone_chunk_is_read_and_tokenised_once_per_run(standins, tmp_path):
    setup = standins.make_setup(tmp_path, method="md", epochs=4)
    setup.student = tokenising_student(standins)
    counting = CountingLoad(setup.task_source.load)
    setup.task_source.load = counting
    train(setup)
    assert counting.rows == 10 and len(counting.calls) == 1
    assert sorted(setup.student.tokenised) == sorted(e.id for e in setup.task_source.examples)


def test_streamed_chunks_are_tokenised_once_per_epoch_not_per_step(standins):
    student = tokenising_student(standins)
    source = chunked(standins, 10, 4)
    steps = 2 * source.steps_per_epoch(2)
    with stream(standins, source, student=student, batch_size=2, stop=steps) as batches:
        take(batches, steps)
        with pytest.raises(StopIteration):  # nothing is read past the stage's last step
            next(batches)
    assert len(student.tokenised) == 20 and len(set(student.tokenised)) == 10


def test_batches_follow_the_epoch_order_and_a_late_start_resumes_it(standins):
    source = chunked(standins, 10, 4)
    order = [
        rows
        for epoch in range(2)
        for _, rows in epoch_order(source, seed=0, stage="task", epoch=epoch, batch_size=3)
    ]
    chunks = [
        ci
        for epoch in range(2)
        for ci, _ in epoch_order(source, seed=0, stage="task", epoch=epoch, batch_size=3)
    ]
    expected = [
        [source.examples[source.chunks[c][r]].id for r in rows.tolist()]
        for c, rows in zip(chunks, order)
    ]
    with stream(standins, source) as batches:
        got = [[e.id for m in b.micro for e in m.examples] for b in take(batches, len(order))]
    assert got == expected
    with stream(standins, source, start=5) as batches:
        late = take(batches, len(order) - 5)
    assert [b.step for b in late] == list(range(5, len(order)))
    assert [[e.id for m in b.micro for e in m.examples] for b in late] == expected[5:]


def test_two_ranks_split_every_global_batch_and_read_only_their_share(standins):
    source = chunked(standins, 10, 4)
    steps = 2 * source.steps_per_epoch(3)
    ranks = [stream(standins, source, layout=Layout(rank, 2, 2), stop=steps) for rank in range(2)]
    with ranks[0] as zero, ranks[1] as one:
        for a, b in zip(take(zero, steps), take(one, steps)):
            assert a.step == b.step
            ids = [
                [e.id for m in batch.micro for e in m.examples if m.weight > 0] for batch in (a, b)
            ]
            assert not set(ids[0]) & set(ids[1])
            assert sum(m.weight for batch in (a, b) for m in batch.micro) == pytest.approx(1.0)
            assert all(len(m.examples) <= 1 for batch in (a, b) for m in batch.micro)
    reads = [r.rows_read for r in ranks]  # 2 epochs; a borrowed row (4 batches of 1) is read too
    assert 20 <= sum(reads) <= 24 and 0 < min(reads) and max(reads) < 20


def test_a_rank_without_rows_borrows_one_with_weight_zero():
    pieces, borrowed = Layout(1, 2, 1).share(torch.tensor([7]))
    assert borrowed and [p.tolist() for p in pieces] == [[7]]
    pieces, borrowed = Layout(0, 2, 4).share(torch.arange(5))
    assert not borrowed and [p.tolist() for p in pieces] == [[0], [1], [2]]
    pieces, _ = Layout(0, 1, 2).share(torch.arange(5))
    assert [p.tolist() for p in pieces] == [[0, 1, 2], [3, 4]]


def test_a_loader_error_reaches_the_training_loop(standins, tmp_path):
    setup = standins.make_setup(tmp_path, method="md", chunk=4)

    def broken(examples):
        raise MissingTargetError("no targets for these examples")

    setup.task_source.load = broken
    with pytest.raises(MissingTargetError, match="no targets"):
        train(setup)
    assert not [t for t in threading.enumerate() if t.name.startswith("madcache-")]


def test_the_prefetcher_stays_within_its_depth():
    produced = []

    def numbers():
        for i in range(100):
            produced.append(i)
            yield i

    prefetch = Prefetcher(numbers(), depth=2, name="madcache-test")
    assert next(prefetch) == 0
    deadline = time.monotonic() + 5
    while len(produced) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.2)
    assert len(produced) == 2  # the held item and the next one, no more
    assert next(prefetch) == 1 and next(prefetch) == 2
    prefetch.signal_stop()
    prefetch.thread.join(timeout=5)
    assert not prefetch.thread.is_alive()
