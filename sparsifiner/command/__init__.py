"""The installed home of the repository's top-level ``cli.py`` (``cli.py`` here links to it).

The console script ``sparsifiner`` runs ``sparsifiner.command.cli:main``.
"""
