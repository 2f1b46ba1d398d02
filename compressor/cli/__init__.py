"""The command line (typer): ``mcompress run | check | package | predict | inspect | example``."""

from mcompress.cli.main import app, main  # noqa: F401
