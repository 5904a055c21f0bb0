"""The ``autocompress`` command line."""
