"""v2w library: turn pretrained video diffusion models into action-conditioned world models.

Stages live in their own modules (``pipelines.data`` for ``prepare``); the CLI in ``v2w_cli`` is
a thin shell over them. Nothing here imports the CLI.
"""

__version__ = "0.1.0"

from pipelines.errors import V2WError  # noqa: E402

__all__ = ["V2WError", "__version__"]
