"""Plugins (docs/architecture.md, "Plugins"): another distribution's entry points in the groups
`madcache.students`, `.teachers`, `.datasets`, `.methods`, `.region_formats` (and `.trackers`)
are read by the registries. A tiny distribution (a package + a `.dist-info` with METADATA and
entry_points.txt, written here) on a temporary sys.path entry: its student trains end to end on
the demo world without a change to madcache; a broken plugin is one line; a built-in wins."""

from __future__ import annotations

import importlib
import json
import sys
import textwrap
from pathlib import Path

import pytest

from madcache.core.errors import PluginError, UnknownNameError
from madcache.core.registry import PluginWarning, Registry

PLUGIN = '''
from madcache.students import StudentSpec
from madcache.students.single_stream import single_stream


def plugin_stream(**options):
    """The built-in single-stream student under the plugin's own name."""
    student = single_stream(**options)
    student.name = "plugin-stream"
    return student


spec = StudentSpec(plugin_stream, path_options=("tokenizer_dir",))
'''


def install(site: Path, name: str, entry_points: str, module: str = PLUGIN) -> None:
    """A distribution as pip would leave it in site-packages: the package and its dist-info."""
    package = name.replace("-", "_")
    (site / package).mkdir(parents=True)
    (site / package / "__init__.py").write_text(module)
    info = site / f"{package}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(textwrap.dedent(entry_points))
    importlib.invalidate_caches()


@pytest.fixture
def site(tmp_path, monkeypatch):
    site = tmp_path / "site-packages"
    site.mkdir()
    monkeypatch.syspath_prepend(str(site))
    yield site
    for name in [m for m in sys.modules if m.startswith("madcache_plugin")]:
        del sys.modules[name]


def test_a_plugin_student_trains_end_to_end(site, demo_root, tmp_path):
    from madcache.students import STUDENTS, load_student
    from madcache.students.regions import build_region_store
    from madcache.train.config import TrainConfig
    from madcache.train.loop import run_training

    install(
        site,
        "madcache-plugin-stream",
        """
        [madcache.students]
        plugin-stream = madcache_plugin_stream:spec
        """,
    )
    assert "plugin-stream" in STUDENTS.names() and "plugin-stream" not in STUDENTS.builtin_names()
    root = demo_root / "vcr"
    for split in ("train", "val"):
        build_region_store(
            dataset="vcr",
            root=root,
            split=split,
            extractor="boxcrop",
            out=tmp_path / f"regions-{split}",
            max_regions=4,
            progress=False,
        )
    run = tmp_path / "run"
    metrics = run_training(
        TrainConfig(
            dataset="vcr",
            root=str(root),
            out=str(run),
            method="baseline",
            student="plugin-stream",
            regions=str(tmp_path / "regions-train"),
            eval_regions=str(tmp_path / "regions-val"),
            max_steps=2,
            batch_size=4,
            lr=1e-3,
            student_options=dict(
                hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64, max_length=48
            ),
        )
    )
    assert metrics["status"] == "complete" and set(metrics["eval"]["val"]) == {
        "q2a",
        "qa2r",
        "q2ar",
    }
    saved = json.loads((run / "student" / "student.json").read_text())
    assert saved["student"] == "plugin-stream"
    assert load_student(run / "student").name == "plugin-stream"  # loads back by its name


def test_every_wired_registry_reads_its_group(site):
    from madcache.data import DATASETS
    from madcache.method.methods import METHODS, Method, task
    from madcache.students import STUDENTS
    from madcache.students.region_formats import REGION_FORMATS
    from madcache.teachers import TEACHERS
    from madcache.train.tracking import TRACKERS

    install(
        site,
        "madcache-plugin-all",
        """
        [madcache.methods]
        plugin-method = madcache_plugin_all:method
        [madcache.teachers]
        plugin-teacher = madcache_plugin_all:factory
        [madcache.datasets]
        plugin-dataset = madcache_plugin_all:factory
        [madcache.region_formats]
        plugin-format = madcache_plugin_all:factory
        [madcache.trackers]
        plugin-tracker = madcache_plugin_all:factory
        """,
        module=textwrap.dedent("""
        from madcache.method.methods import Method, task
        method = Method("plugin-method", (task(),))
        def factory(*args, **kwargs):
            return "made"
        """),
    )
    assert METHODS.get("plugin-method") == Method("plugin-method", (task(),))
    for registry, name in [
        (TEACHERS, "plugin-teacher"),
        (DATASETS, "plugin-dataset"),
        (REGION_FORMATS, "plugin-format"),
        (TRACKERS, "plugin-tracker"),
    ]:
        assert name in registry and registry.get(name)() == "made"
    assert "plugin-method" not in STUDENTS


def test_a_broken_plugin_is_one_line_naming_it(site):
    registry = Registry("widget", group="madcache.widgets")
    install(
        site,
        "madcache-plugin-broken",
        """
        [madcache.widgets]
        broken = madcache_plugin_broken:missing_name
        """,
        module="import a_module_that_is_not_installed\n",
    )
    assert registry.names() == ["broken"]  # listed without importing it
    with pytest.raises(PluginError) as error:
        registry.get("broken")
    message = str(error.value)
    assert "\n" not in message
    assert message.startswith(
        "widget 'broken': plugin distribution 'madcache-plugin-broken 0.1' "
        "(entry point 'broken = madcache_plugin_broken:missing_name' in "
        "madcache.widgets) failed to load: ModuleNotFoundError: No module "
        "named 'a_module_that_is_not_installed'"
    )
    with pytest.raises(UnknownNameError, match="unknown widget 'nope'. Available: broken"):
        registry.get("nope")


def test_a_broken_plugin_on_the_command_line_exits_2_without_a_traceback(site, tmp_path, demo_root):
    from click.testing import CliRunner

    from madcache.cli import cli

    install(
        site,
        "madcache-plugin-bad",
        """
        [madcache.students]
        bad-student = madcache_plugin_bad:spec
        """,
        module="raise RuntimeError('boom')\n",
    )
    result = CliRunner().invoke(
        cli,
        [
            "train",
            "--dataset",
            "vcr",
            "--root",
            str(demo_root / "vcr"),
            "--out",
            str(tmp_path / "o"),
            "--student",
            "bad-student",
            "--method",
            "baseline",
        ],
    )
    assert result.exit_code == 2
    assert "Traceback" not in result.output
    assert "madcache-plugin-bad 0.1" in result.output and "RuntimeError: boom" in result.output


def test_a_builtin_wins_over_a_plugin_of_the_same_name(site):
    registry = Registry("widget", group="madcache.widgets")
    registry.register("mine", "built-in")
    install(
        site,
        "madcache-plugin-clash",
        """
        [madcache.widgets]
        mine = madcache_plugin_clash:value
        """,
        module="value = 'plugin'\n",
    )
    with pytest.warns(
        PluginWarning,
        match="widget 'mine' of plugin distribution "
        "'madcache-plugin-clash 0.1'.* is ignored: the "
        "built-in widget of that name wins",
    ):
        assert registry.get("mine") == "built-in"
