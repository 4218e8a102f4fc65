"""python -m tidemark_cli: the same as the tidemark command."""

from tidemark_cli.app import main

main()
