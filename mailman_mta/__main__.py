"""Run the command line: ``python -m mailman_mta``."""

from .cli import main

if __name__ == "__main__":
    main(prog_name="mailman-mta")
