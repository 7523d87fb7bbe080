"""Run the command line: ``python -m mailman_mta``."""

from .cli import main

main(prog_name="mailman-mta")
