"""rpathfix: make native libraries in Python wheels load outside one shared site-packages."""

__version__ = "0.1.0"
