"""The model repository: one home for everything that knows its layout and its files.

- ``layout``: paths, the names of every model of a classifier, discovery of what a repository
  holds (standard library only, so the thin client can import it);
- ``configs``: the typed serving settings (``configs.settings``), each model's config built from
  them (``configs.builders``), rendered to config.pbtxt and parsed back (``configs.parser``); the
  only code that reads a config;
- ``classifier``: what makes one classifier (labels, preprocessing, provenance);
- ``variants``: the registry of variants (INT8, fused, OpenVINO), one declaration each;
- ``versions``: which versions of a classifier's ONNX model are on disk and which one answers;
- ``writer``: writes a classifier's and a variant's files into a staging directory;
- ``transaction``: stage, verify, swap and lock; every writer installs through it.

Nothing here imports torch, the server binary or the client.
"""
