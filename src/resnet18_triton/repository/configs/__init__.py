"""A classifier's Triton model configs: typed settings, the builders, and the parser, in one home.

- ``settings``: ``ServingSettings``, every knob the configs depend on, with the core budget rule
  and the queue policy that derive them;
- ``builders``: one ``ModelConfig`` builder per model (preprocess, classifier, ensemble) and the
  variants' configs derived from the FP32 ones (INT8, OpenVINO, fused);
- ``parser``: config.pbtxt text both ways, and reading a repository's configs back into the
  ``ServingSettings`` and ``Classifier`` they were rendered from.

Each module imports only those listed before it. This is the only code that reads a config.
"""
