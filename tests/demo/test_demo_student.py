"""The demo student's caption examples: MLM on every caption, ITM on the describing caption."""

from __future__ import annotations

import json

import pytest

from madcache.demo.student import caption_examples
from madcache.demo.teacher import CAPTIONS


def test_itm_text_is_the_images_describing_caption_and_mlm_reads_every_caption(demo_root):
    lines = [json.loads(line) for line in (demo_root / CAPTIONS).read_text().splitlines()]
    first = {}
    for line in lines:
        first.setdefault(line["image"], line["caption"])
    examples = caption_examples(demo_root)
    assert [ex.choices[0].text for ex in examples] == [line["caption"] for line in lines]
    assert all(ex.label_free_text.text == first[ex.image_id] for ex in examples)
    assert len({ex.label_free_text.text for ex in examples}) > len(first) // 2
    # the describing caption names the objects by their looks: a colour word for each person
    sample = examples[0]
    persons = sum(name == "person" for name in lines[0]["objects"])
    colours = {"red", "orange", "yellow", "green", "blue", "purple", "pink", "black"}
    words = [word.strip(",.") for word in sample.label_free_text.text.split()]
    assert sum(word in colours for word in words) == persons


def test_a_finished_student_is_reused_only_with_the_same_settings(tmp_path):
    from madcache.core.errors import ConfigError
    from madcache.core.io import write_json
    from madcache.demo.student import SUMMARY, DemoStudentConfig, pretrain_demo_student, settings_of

    config = DemoStudentConfig(data=tmp_path / "world", out=tmp_path / "student")
    config.out.mkdir()
    write_json(config.out / SUMMARY, {**settings_of(config), "curve": []})
    assert pretrain_demo_student(config, progress=False)["curve"] == []
    write_json(config.out / SUMMARY, {**settings_of(config), "version": 1, "curve": []})
    with pytest.raises(ConfigError, match=r"version=1 \(now 2\); delete .*student"):
        pretrain_demo_student(config, progress=False)


def test_cli_refuses_a_student_pretrained_otherwise_in_one_line(tmp_path, demo_root):
    from click.testing import CliRunner

    from madcache.cli import cli
    from madcache.core.io import write_json
    from madcache.demo.student import SUMMARY, DemoStudentConfig, settings_of

    out = tmp_path / "student"
    out.mkdir()
    write_json(
        out / SUMMARY,
        {**settings_of(DemoStudentConfig(data=demo_root, out=out)), "steps": 500, "curve": []},
    )
    result = CliRunner().invoke(
        cli, ["demo", "student", "--data", str(demo_root), "--out", str(out), "--no-progress"]
    )
    assert result.exit_code == 2
    assert (
        result.output.strip()
        .splitlines()[-1]
        .endswith(
            f"steps=500 (now 1000); delete {out} to pretrain it again, or choose another --out"
        )
    )
