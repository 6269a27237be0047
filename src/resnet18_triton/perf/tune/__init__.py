"""``resnet18-triton tune``: measure serving plans on this machine, pick the best, apply it.

``space`` is the search space and the choice of a winner (pure functions), ``repository`` where
plans are rendered and applied (scratch copies, ``--apply``, ``tune revert``), ``search`` the
measuring of each plan and the report, and ``cli`` the command. This module imports nothing, so
the lazy command registry loads ``tune.cli`` without the search's dependencies.
"""
