"""One module per ``gmmkit`` subcommand; see :data:`gmmkit.cli.COMMANDS`."""
