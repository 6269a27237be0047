"""Serve torchvision ResNet-18 image classifiers on CPUs with NVIDIA Triton Inference Server.

The root holds what every part shares: ``contract`` (model and tensor names, defaults, limits),
``errors`` (each with its exit code), ``layout`` (where things live in a model repository) and
``files`` (atomic writes, image files). Subpackages by role: ``client`` (thin, no torch or Pillow),
``export``, ``server`` and ``perf``.
"""
