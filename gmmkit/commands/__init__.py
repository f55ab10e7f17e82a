"""One module per ``gmmkit`` subcommand. Each exposes ``register(subparsers)``, which adds its parser and sets
``func=run(args, parser)`` (and ``flags``, its config fields' flags); ``run`` turns flags into library calls.
Library modules are imported inside ``run``, so that building the parser (``gmmkit --help``, a bad flag)
loads none of them."""
