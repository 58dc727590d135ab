"""One flag vocabulary across the CLI (issues 32.2 and 34.3): every click command of the tree is
walked; its flags come from config fields (`commands/options.py`), one idea has one name, type
and help style everywhere, and a flag naming a registry entry lists the registry's names."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import defaultdict
from dataclasses import MISSING

import click
import pytest
from click.testing import CliRunner

from madcache.cli import COMMANDS, cli
from madcache.commands.options import HAND_WRITTEN, NameChoice, SettingOption, registry_names

# commands that show progress: each takes --progress/--no-progress
SHOWS_PROGRESS = {
    "extract",
    "regions",
    "train",
    "sweep",
    "demo data",
    "demo teacher",
    "demo student",
    "demo run",
    "demo search",
    "demo diagnose",
    "demo study",
}
# the spellings this vocabulary replaced (issue 32.2): none is a visible flag any more
REPLACED = {"--option": "--read-option", "--quiet": "--no-progress"}


def walk(command: click.Command = cli, path: tuple[str, ...] = ()):
    """(path, command) of every leaf command: ("data", "stats"), ("train",), ..."""
    ctx = click.Context(command)
    if isinstance(command, click.Group):
        for name in command.list_commands(ctx):
            yield from walk(command.get_command(ctx, name), (*path, name))
    else:
        yield path, command


COMMAND_LIST = list(walk())


def options(*, hidden: bool = False):
    """(command path, option) of every option in the tree, less --help (and hidden ones)."""
    return [
        (" ".join(path), p)
        for path, command in COMMAND_LIST
        for p in command.params
        if isinstance(p, click.Option) and p.name != "help" and (hidden or not p.hidden)
    ]


def kind(option: click.Option) -> tuple:
    """What a value of the flag looks like to a user."""
    if option.is_flag or option.secondary_opts:
        value = ("switch",)
    elif isinstance(option.type, NameChoice):
        value = ("name of", option.type.kind)
    elif isinstance(option.type, click.Choice):
        value = ("one of", tuple(option.type.choices))
    elif isinstance(option.type, (click.IntRange, type(click.INT))):
        value = ("integer",)
    elif isinstance(option.type, (click.FloatRange, type(click.FLOAT))):
        value = ("number",)
    elif option.metavar == "JSON" or "=" in (option.metavar or ""):
        value = (option.metavar,)  # KEY=VALUE pairs, JSON
    else:
        value = ("text",)
    return (*value, "repeatable" if option.multiple else "once")


def test_the_walk_sees_every_command():
    names = {" ".join(path) for path, _ in COMMAND_LIST}
    assert {
        "train",
        "extract",
        "regions",
        "sweep",
        "report",
        "eval",
        "predict",
        "data stats",
        "data lowshot",
        "data sm",
        "cache info",
        "demo run",
        "demo teacher",
    } <= names
    assert len(names) == 20


def test_every_flag_comes_from_a_config_field():
    hand_written = [
        f"{path}: {option.opts[0]}"
        for path, option in options(hidden=True)
        if not isinstance(option, SettingOption) and option.opts[0] not in HAND_WRITTEN
    ]
    assert hand_written == []
    used = {option.opts[0] for _, option in options() if not isinstance(option, SettingOption)}
    assert used <= HAND_WRITTEN and used == {"--config", "--json"}


def test_one_name_per_idea_and_one_idea_per_name():
    """A setting (a field name with one kind of value) has one flag in every command, and a
    flag sets one setting (demo teacher's warm-up is a step count, --warmup elsewhere a
    fraction: --warmup-steps)."""
    flags_of, fields_of = defaultdict(set), defaultdict(set)
    for _path, option in options():
        flags_of[option.name, kind(option)].add(option.opts[0])
        fields_of[option.opts[0]].add(option.name)
    assert {name: flags for name, flags in flags_of.items() if len(flags) > 1} == {}
    assert {flag: names for flag, names in fields_of.items() if len(names) > 1} == {}
    visible = {opt for _, option in options() for opt in option.opts + option.secondary_opts}
    assert not set(REPLACED) & visible


def test_a_shared_flag_has_one_type_everywhere():
    kinds = defaultdict(dict)
    for path, option in options():
        kinds[option.opts[0]][path] = kind(option)
    differing = {flag: by_path for flag, by_path in kinds.items() if len(set(by_path.values())) > 1}
    assert differing == {}
    # the shared ideas of issue 32.2, each on several commands
    assert {p for p, k in kinds["--read-option"].items()} == {
        "train",
        "extract",
        "regions",
        "data stats",
        "data lowshot",
    }
    assert set(kinds["--report-to"]) == {"train", "sweep", "report"}
    assert set(kinds["--report-to"].values()) == {("name of", "tracker", "once")}
    assert set(kinds["--dataset"].values()) == {("name of", "dataset", "once")}


def test_one_help_style():
    """A sentence (or a bracketed note) per flag; defaults shown one way, by the generator."""
    for path, option in options():
        if not isinstance(option, SettingOption):
            continue
        text = option.field.metadata.get("help", "")
        assert text and text[-1] in ".])", f"{path} {option.opts[0]}: {text!r}"
        assert not option.show_default, f"{path} {option.opts[0]}"
        # a default written into the help only where the generator shows none
        assert "[default:" not in text or option.field.default in (None, MISSING), (
            f"{path} {option.opts[0]}"
        )


def test_every_command_that_shows_progress_takes_one_progress_switch():
    progress = {path: option for path, option in options() if option.name == "progress"}
    assert set(progress) == SHOWS_PROGRESS
    assert {(tuple(o.opts), tuple(o.secondary_opts)) for o in progress.values()} == {
        (("--progress",), ("--no-progress",))
    }


def test_registry_flags_list_every_name_in_their_help():
    registry_flags = [
        (path, option) for path, option in options() if isinstance(option.type, NameChoice)
    ]
    assert {option.opts[0] for _, option in registry_flags} == {
        "--dataset",
        "--teacher",
        "--vision-teacher",
        "--text-teacher",
        "--relevance-model",
        "--student",
        "--method",
        "--report-to",
        "--protocol",
        "--extractor",
    }
    for path, option in registry_flags:
        command = dict((" ".join(p), c) for p, c in COMMAND_LIST)[path]
        _, help_text = option.get_help_record(click.Context(command))
        names = registry_names(option.type.kind)
        assert names and f"One of: {', '.join(names)}." in help_text, (path, option.opts[0])
    train_help = CliRunner().invoke(cli, ["train", "--help"]).output
    assert "--student NAME" in train_help and "uniter" in train_help


def test_a_name_registered_after_import_is_listed_and_accepted(monkeypatch, tmp_path):
    """The choices are read when the command runs: what a plugin's entry point registers is
    valid, and an unknown name lists the valid ones."""
    from madcache.data import DATASETS

    monkeypatch.setitem(DATASETS._entries, "vocab-vcr", DATASETS.get("vcr"))
    help_text = CliRunner().invoke(cli, ["data", "stats", "--help"]).output
    assert "vocab-vcr" in "".join(help_text.split())  # wherever --help wraps it
    (tmp_path / "val.jsonl").write_text(json.dumps(VCR_RECORD) + "\n")
    result = CliRunner().invoke(
        cli,
        [
            "data",
            "stats",
            "--dataset",
            "vocab-vcr",
            "--root",
            str(tmp_path),
            "--split",
            "val",
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["dataset"] == "vocab-vcr"
    wrong = CliRunner().invoke(
        cli, ["data", "stats", "--dataset", "vcx", "--root", str(tmp_path), "--split", "val"]
    )
    assert wrong.exit_code == 2 and "'vcx' is not one of" in wrong.output
    assert "'vocab-vcr'" in wrong.output


def test_a_teacher_pattern_accepts_its_argument():
    option = next(o for path, o in options() if path == "extract" and o.name == "teacher")
    assert option.type.convert("vit:/models/vit-base", option, None) == "vit:/models/vit-base"
    assert option.type.convert("madcache-demo", option, None) == "madcache-demo"
    for bad in ("vit:", "nope:/x", "clip"):
        with pytest.raises(click.BadParameter):
            option.type.convert(bad, option, None)


VCR_RECORD = {
    "annot_id": "val-1",
    "objects": ["person", "person"],
    "img_fn": "m/a.jpg",
    "metadata_fn": "m/a.json",
    "question": ["Is", [0], "ok", "?"],
    "answer_choices": [[[0], "is", "."], [[1], "is", "."], ["no"], ["yes"]],
    "rationale_choices": [["a"], ["b"], ["c"], ["d"]],
    "answer_label": 0,
    "rationale_label": 2,
}


def test_a_documented_old_spelling_still_works_hidden_with_a_warning(tmp_path):
    """`--option` (docs/datasets.md before --read-option) reaches the reader as --read-option
    does: modes=qar labels the example with its rationale."""
    (tmp_path / "val.jsonl").write_text(json.dumps(VCR_RECORD) + "\n")
    base = [
        "data",
        "stats",
        "--dataset",
        "vcr",
        "--root",
        str(tmp_path),
        "--split",
        "val",
        "--json",
    ]
    new = CliRunner().invoke(cli, [*base, "--read-option", "modes=qar"])
    old = CliRunner().invoke(cli, [*base, "--option", "modes=qar"])
    assert new.exit_code == old.exit_code == 0, old.output
    assert json.loads(old.stdout) == json.loads(new.stdout)
    assert json.loads(old.stdout)["labels"] == {"2": 1}
    assert "warning: --option is deprecated; use --read-option" in old.stderr
    assert "--option" not in CliRunner().invoke(cli, ["data", "stats", "--help"]).output.replace(
        "--read-option", ""
    )


def test_the_listed_one_line_help_is_each_commands_own():
    ctx = click.Context(cli)
    for name, (_, line) in COMMANDS.items():
        command = cli.get_command(ctx, name)
        assert command.get_short_help_str(10_000) == click.Command(
            name, help=line
        ).get_short_help_str(10_000), name
    demo = cli.get_command(ctx, "demo")
    for name, (_, line) in demo.lazy.items():
        assert demo.get_command(ctx, name).get_short_help_str(10_000) == click.Command(
            name, help=line
        ).get_short_help_str(10_000), name


def test_top_level_help_imports_no_command_and_no_registry():
    code = (
        "import sys; from click.testing import CliRunner; from madcache.cli import cli; "
        "r = CliRunner().invoke(cli, ['--help']); assert r.exit_code == 0, r.output; "
        "d = CliRunner().invoke(cli, ['demo', '--help']); assert d.exit_code == 0; "
        "print(' '.join(sorted(m for m in sys.modules if m.startswith('madcache.'))))"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.split()
    stages = {m.split(".")[1] for m in loaded}
    assert stages <= {"cli", "core", "commands"}, loaded
    assert [m for m in loaded if m.startswith("madcache.commands")] == [
        "madcache.commands",
        "madcache.commands.demo",
    ]


@pytest.mark.parametrize("flags,hidden", [([], False), (["--no-progress"], True)])
def test_train_no_progress_hides_the_training_progress(monkeypatch, flags, hidden):
    """`train` has no progress argument to pass on: its displays are off inside
    `core.progress.shown(False)`."""
    import madcache.train.loop as loop
    from madcache.core.progress import progress

    seen = {}

    def fake(config):
        seen["disabled"] = progress(total=3, desc="task").disable
        return {"history": [], "eval": {}}

    monkeypatch.setattr(loop, "run_training", fake)
    result = CliRunner().invoke(
        cli, ["train", "--dataset", "vcr", "--root", "r", "--out", "o", *flags]
    )
    assert result.exit_code == 0, result.output
    assert seen["disabled"] is hidden
