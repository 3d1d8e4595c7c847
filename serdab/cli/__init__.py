"""The `serdab` command line: a thin typer app plus one module per command."""
