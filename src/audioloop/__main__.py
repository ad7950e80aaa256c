"""`python -m audioloop` runs the CLI."""

from audioloop.cli import app

app(prog_name="audioloop")
