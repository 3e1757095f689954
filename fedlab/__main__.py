"""``python -m fedlab`` runs the ``fedlab`` command."""

from fedlab.cli.main import main

main()
