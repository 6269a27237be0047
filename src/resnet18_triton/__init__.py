"""Serve torchvision ResNet-18 image classifiers on CPUs with NVIDIA Triton Inference Server.

The root holds what every part shares: ``contract`` (model and tensor names, defaults, limits),
``errors`` (each with its exit code), ``layout`` (where things live in a model repository),
``extras`` (the message for a missing optional dependency) and ``cli`` (the command group).
Subpackages by role, each building on the root only: ``client`` (thin, no torch or Pillow),
``export``, ``server`` and ``perf`` (which also uses export and server). See docs/architecture.md.
"""
