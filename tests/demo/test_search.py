"""The demo's settings search: dev split held out of train by image, grid, ranking."""

import json

import pytest

from madcache.core.errors import ConfigError
from madcache.demo.search import (
    grid_points,
    load_search,
    make_dev_root,
    point_name,
    search_markdown,
    summarise,
)


def _world(root, images=10, per_image=3):
    (root / "vcr1images" / "movie").mkdir(parents=True)
    lines = []
    for i in range(images):
        (root / "vcr1images" / "movie" / f"{i}.jpg").write_bytes(b"jpg%d" % i)
        for q in range(per_image):
            lines.append(json.dumps({"img_id": f"train-{i}", "annot_id": f"train-{i}-{q}"}))
    (root / "train.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")


def _read(path):
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_dev_root_holds_out_whole_images(tmp_path):
    _world(tmp_path / "world")
    counts = make_dev_root(tmp_path / "world", tmp_path / "dev", fraction=0.2)
    train, dev = _read(tmp_path / "dev" / "train.jsonl"), _read(tmp_path / "dev" / "val.jsonl")
    assert counts == {"train": 24, "dev": 6, "dev_images": 2}
    assert len(train) + len(dev) == 30
    assert not {r["img_id"] for r in train} & {r["img_id"] for r in dev}
    linked = tmp_path / "dev" / "vcr1images" / "movie" / "3.jpg"
    assert linked.read_bytes() == b"jpg3" and not linked.is_symlink()
    # the source is untouched, and a second call keeps the first split
    assert len(_read(tmp_path / "world" / "train.jsonl")) == 30
    assert make_dev_root(tmp_path / "world", tmp_path / "dev", fraction=0.5) == counts


def test_grid_is_every_combination_in_file_order():
    points = grid_points({"lr": [1e-4, 5e-4], "max_steps": [100, 200, 300]})
    assert len(points) == 6
    assert points[0] == {"lr": 1e-4, "max_steps": 100}
    assert point_name(points[-1]) == "lr0.0005-max_steps300"


def _result(name, point, finals):
    runs = [{"shots": k, "seed": s, "final": v, "curve": []} for (k, s), v in finals.items()]
    return {"name": name, "point": point, "runs": runs, "mean": sum(finals.values()) / len(finals)}


def test_best_mean_wins_and_ties_go_to_fewer_steps():
    spec = {"shots": [8, 32], "seeds": [0], "eval_every": 50}
    results = [
        _result("a", {"max_steps": 300}, {(8, 0): 40.0, (32, 0): 50.0}),
        _result("b", {"max_steps": 150}, {(8, 0): 50.0, (32, 0): 40.0}),
        _result("c", {"max_steps": 150}, {(8, 0): 30.0, (32, 0): 40.0}),
    ]
    summary = summarise(results, spec)
    assert summary["chosen"] == {"max_steps": 150}
    table = search_markdown(summary)
    assert "| a | 40.00 | 50.00 | 45.00 | yes |" in table


def test_points_over_the_budget_are_shown_but_never_chosen():
    spec = {"shots": [8], "seeds": [0], "eval_every": 50, "budget": {"max_steps": 150}}
    results = [
        _result("long", {"max_steps": 300}, {(8, 0): 60.0}),
        _result("short", {"max_steps": 150}, {(8, 0): 40.0}),
    ]
    summary = summarise(results, spec)
    assert summary["chosen"] == {"max_steps": 150}
    assert "| long | 60.00 | 60.00 | no |" in search_markdown(summary)
    with pytest.raises(ConfigError, match="budget"):
        summarise(results[:1], spec)


def test_bad_spec_names_the_key(tmp_path):
    spec = tmp_path / "search.toml"
    spec.write_text(
        "shots = [8]\nseeds = [0]\ndev_fraction = 1.5\neval_every = 5\n[grid]\nlr = [1e-3]\n",
        encoding="utf-8",
    )
    with pytest.raises(ConfigError, match="dev_fraction"):
        load_search(spec)
    spec.write_text("shots = [8]\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="missing key 'seeds'"):
        load_search(spec)


def test_shipped_spec_loads():
    spec = load_search()
    assert spec["grid"] and 0 < spec["dev_fraction"] < 1
