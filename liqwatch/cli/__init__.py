"""The `liqwatch` command: one typer app, with a module per group of subcommands."""
