"""The `madcache` command line: a thin click layer; each command builds a config and calls one
library function. Subcommands live in `madcache/commands/` and are imported only when used, so
`madcache train` never imports a teacher module (or open_clip).

Errors: a `MadcacheError` (bad input, a refused run) or a disk error (full, read-only) is one line
and exit code 2; any other exception is a bug in madcache: one line saying so and exit code 1,
or the traceback with `madcache --debug ...`."""

from __future__ import annotations

import importlib

import click

from madcache.core.errors import MadcacheError
from madcache.core.io import disk_problem

# name -> ("module:attribute" of a click command or group, its one-line help). The line is
# here so that `madcache --help` lists the commands without importing them (nor, through their
# configs, any registry); tests/test_cli_vocabulary.py checks it against each command's own.
COMMANDS = {
    "data": (
        "madcache.commands.data:data",
        "Dataset tools: statistics, low-shot splits, shortcut-mitigated VCR.",
    ),
    "demo": (
        "madcache.commands.demo:demo",
        "The demo world: generate data, pretrain its teacher and student, run the whole pipeline.",
    ),
    "extract": (
        "madcache.commands.extract:extract",
        "Run the teachers once over a split and write every MAD target into a sharded cache.",
    ),
    "cache": ("madcache.commands.cache:cache", "Inspect and check teacher-target caches."),
    "regions": (
        "madcache.commands.regions:regions",
        "Extract region features (one entry per image) for the student; resumable.",
    ),
    "train": (
        "madcache.commands.train:train",
        "Train a student on cached teacher targets (baseline, md, mad and ablations), or "
        "an adapter head on the frozen cached features (adapter-*).",
    ),
    "eval": (
        "madcache.commands.evaluate:eval_command",
        "Evaluate a run (metrics into its metrics.json) or a teacher zero-shot.",
    ),
    "predict": (
        "madcache.commands.predict:predict",
        "Write a run's predictions on SPLIT as a submission file (docs/evaluation.md).",
    ),
    "sweep": (
        "madcache.commands.sweep:sweep",
        "Train and evaluate every missing run of a pipeline (methods x shots x seeds x students).",
    ),
    "report": (
        "madcache.commands.report:report",
        "Aggregate every metrics.json under RUNS_DIR: mean ± std over seeds per cell, "
        "and each method's paired difference to the baseline with 95% intervals and its "
        "power (MDE).",
    ),
}


class UserError(click.ClickException):
    """A `MadcacheError` shown as one line (no traceback), exit code 2."""

    exit_code = 2


class InternalError(click.ClickException):
    """An unexpected exception (a bug), shown as one line without --debug; exit code 1."""

    exit_code = 1


# click's own control flow, which passes through untouched
CLICK_FLOW = (click.exceptions.ClickException, click.exceptions.Exit, click.exceptions.Abort)


def one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


class LazyGroup(click.Group):
    """Imports a subcommand's module only when that subcommand runs (its one-line help in
    `--help` comes from `lazy`), and turns any `MadcacheError` raised below it into a clean
    one-line error."""

    def __init__(self, *args, lazy: dict[str, tuple[str, str]] | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.lazy = lazy or {}

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(super().list_commands(ctx)) | set(self.lazy))

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name in self.lazy:
            module_name, attr = self.lazy[name][0].split(":")
            return getattr(importlib.import_module(module_name), attr)
        return super().get_command(ctx, name)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """The commands and their one-line help, without importing a lazy one."""
        names = self.list_commands(ctx)
        limit = formatter.width - 6 - max((len(name) for name in names), default=0)
        rows = [
            (
                name,
                (
                    click.Command(name, help=self.lazy[name][1])
                    if name in self.lazy
                    else self.get_command(ctx, name)
                ).get_short_help_str(limit),
            )
            for name in names
        ]
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)

    def invoke(self, ctx: click.Context):
        given = list(ctx.args)  # click empties it once the subcommand is resolved
        try:
            return super().invoke(ctx)
        except MadcacheError as exc:
            error = UserError(str(exc))  # exit 2, or the error's own (a preempted run: 75)
            error.exit_code = getattr(exc, "exit_code", UserError.exit_code)
            raise error from None
        except CLICK_FLOW:
            raise
        except Exception as exc:
            if ctx.find_root().params.get("debug"):
                raise
            if isinstance(exc, FileNotFoundError) and NO_TEMP in str(exc):
                raise UserError(
                    f"{one_line(exc)} (full or read-only?): free space there or "
                    "set TMPDIR to a writable folder, then rerun"
                ) from None
            if isinstance(exc, OSError) and disk_problem(exc):
                where = exc.filename or output_named(given) or "a file this command writes"
                raise UserError(
                    f"{where}: {disk_problem(exc)}; free space or fix the "
                    "permissions, then rerun the same command"
                ) from None
            raise InternalError(
                f"internal error: {type(exc).__name__}: {one_line(exc)} — this "
                "is a bug, please report it (rerun with --debug for the "
                "traceback)"
            ) from None


OUTPUT_FLAGS = ("--out", "--output")
NO_TEMP = "No usable temporary directory"  # tempfile's error when none is writable


def output_named(args: list[str]) -> str | None:
    """The output path given on the command line (`--out X` or `--out=X`): what a disk error
    without a file name (a failed write of an open file) was writing."""
    for i, arg in enumerate(args):
        flag, eq, value = arg.partition("=")
        if flag in OUTPUT_FLAGS:
            return value if eq else (args[i + 1] if i + 1 < len(args) else None)
    return None


@click.group(cls=LazyGroup, lazy=COMMANDS)
@click.version_option(package_name="madcache")
@click.option("--debug", is_flag=True, help="Show the traceback of an unexpected error.")
def cli(debug: bool) -> None:
    """madcache: run teachers once into a cache, then train students many times (MAD)."""


def main() -> None:
    cli(prog_name="madcache")
