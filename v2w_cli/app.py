"""The Typer app: one module per command; heavy imports happen inside commands so --help is instant."""

from __future__ import annotations

import typer

from v2w_cli import causalize, distill, encode, evaluate, info, play, prepare, pretrain, quickstart, rollout, train
from v2w_cli.common import STATE

app = typer.Typer(
    name="v2w",
    help="Turn pretrained video diffusion models into action-conditioned world models (Vid2World).\n\n"
    "Stages: prepare -> causalize -> train -> rollout -> eval. Each reads and writes files.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        from pipelines import __version__

        typer.echo(f"v2w {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    debug: bool = typer.Option(False, "--debug", help="Show full tracebacks instead of one-line errors."),
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
) -> None:
    STATE["debug"] = STATE["debug"] or debug


prepare.register(app)
pretrain.register(app)
distill.register(app)
causalize.register(app)
encode.register(app)
train.register(app)
distill.register(app)
rollout.register(app)
evaluate.register(app)
info.register(app)
quickstart.register(app)
play.register(app)


# commands whose ``--resume`` takes a value; elsewhere (``pretrain``) it is a plain flag
RESUME_TAKES_VALUE = {"train"}


def normalize_argv(argv: list[str]) -> list[str]:
    """``v2w train --resume`` may stand alone (latest checkpoint) or take a value (``--resume step-N``);
    give the bare form its value so the option parser never swallows the next flag."""
    command = next((a for a in argv if not a.startswith("-")), None)
    if command not in RESUME_TAKES_VALUE:
        return list(argv)
    out = []
    for i, a in enumerate(argv):
        out.append(a)
        if a == "--resume" and (i + 1 == len(argv) or argv[i + 1].startswith("-")):
            out.append("latest")
    return out


def main() -> None:
    import sys

    app(args=normalize_argv(sys.argv[1:]), prog_name="v2w")
