"""``python -m layerindex``: the same as the ``layerindex`` command."""

from layerindex.cli.main import main

main()
