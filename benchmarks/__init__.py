"""Measurement scripts, outside the shipped package: each is a one-off experiment or A/B whose
figures went to docs/decisions.md and the docs. Run them from the repository root with the
project's venv, for example ``.venv/bin/python -m benchmarks.container --repo model_repository``.
What a user runs to measure a server is a subcommand of the package (``loadtest``, ``bench``,
``soak``, ``tune``), with tests."""
