"""The ``export`` package's commands, one module each, named after the command: ``export``,
``publish`` (with ``rollback`` and ``versions``), ``quantize`` and ``openvino``.

Nothing is imported here, so the lazy group of ``resnet18_triton.cli`` loads a command's module
alone; a package whose commands fit in one module keeps them in its ``cli.py``.
"""
