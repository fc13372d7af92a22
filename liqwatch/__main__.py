"""`python -m liqwatch ...` is the `liqwatch` command."""

from liqwatch.cli.main import main

main()
