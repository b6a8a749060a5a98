"""``python -m orchwf ...``: the same as the ``orchwf`` console script."""

from orchwf.cli.main import cli

if __name__ == "__main__":
    cli(prog_name="orchwf")
