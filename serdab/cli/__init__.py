"""The `serdab` command line: a thin typer app plus one module per command.

How the pieces fit: ``app`` loads a command's module only when it runs; each module parses options
and prints, the library decides. Fixed choices are the library's enums (``serdab.choices``), so Typer
checks them and ``--help`` lists them; every ``SerdabError`` becomes one line and an exit code.
``bench_cmd`` is a registry of benchmarks (name, options, module) and one command factory: the
measuring, plotting and tables live in ``serdab.bench``.
"""
