"""The `cellar` command line: the top layer, and the only one that may import every other part.

The app itself is in `cellar.cli.main`; each command group has a module of its own.
"""
