"""The ``v2w`` command line: a thin Typer shell over ``pipelines``."""
