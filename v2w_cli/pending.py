"""Stages that are designed (DESIGN.md) but not built yet: they say so and exit 2."""

from __future__ import annotations

import typer

from v2w_cli.common import not_implemented

_EXTRA = {"allow_extra_args": True, "ignore_unknown_options": True}
PENDING = {
    "eval": ("FVD / FID / LPIPS / SSIM / PSNR, per-horizon curves, reports.", "issue 7"),
}


def register(app: typer.Typer) -> None:
    for name, (text, issue) in PENDING.items():
        app.command(name, help=f"{text}\n\nNot implemented yet ({issue}).", context_settings=_EXTRA)(_stub(name, issue))


def _stub(name: str, issue: str):
    def command(ctx: typer.Context) -> None:
        not_implemented(name, issue)

    return command
