"""``python -m bench``: the CLI (what torchrun starts: ``torchrun ... -m bench run PRESET``)."""

from bench.app.cli import main

main()
