"""``python -m statelab`` runs the CLI."""

from statelab.cli import main

main()
