"""One module per `rpathfix` subcommand (see rpathfix.cli)."""
