"""`python -m rpathfix` is the same as the `rpathfix` console script."""

from rpathfix.cli import console

console()
