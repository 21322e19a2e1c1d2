"""One module per `pgolf` subcommand."""
