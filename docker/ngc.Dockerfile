# ALTERNATIVE, NOT TESTED HERE: Triton in the NGC image (docker-compose.ngc.yml). The default
# image is docker/Dockerfile, built from Debian and PyPI by scripts/build-image.sh.
#
# Triton Inference Server for the ResNet-18 model repository, CPU only.
#
# 24.10 ships Triton 2.51, the same server core as the embedded server
# (nvidia-pytriton 0.7.0), so one model repository works in both places.
# Here the ONNX model runs on the image's native ONNX Runtime backend.
#
# The model repository is not baked in: docker-compose.ngc.yml mounts
# ./model_repository read-only at /models. Build context is this folder only
# (nothing is copied), so the build does not send the repository or the venv.
FROM nvcr.io/nvidia/tritonserver:24.10-py3

# What the Python backend models import: preprocess (Pillow, NumPy) and the
# fused INT8 model NAME_int8_fused (those, and ONNX Runtime in its own
# process). The softmax is part of the ONNX model, so there is no Python
# postprocessing model. Pillow is pinned to the embedded server's version
# (pyproject.toml, server extra) so that both resize bit for bit alike; numpy
# below 2, as there; ONNX Runtime with the same floor as the project's.
RUN python3 -m pip install --no-cache-dir "pillow==13.0.0" "numpy<2" \
    "onnxruntime>=1.18,<2"

# The image's non-root user (uid 1000). Triton needs no root to serve on
# ports above 1024 or to read the mounted model repository.
USER triton-server
