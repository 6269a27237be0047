"""Names and shapes shared by the exporter, the model repository, the server and the client.

Triton-side model code (``model_repository/*/1/model.py``) reads these from its ``config.pbtxt``
instead of importing this module, so that the repository also runs inside the official container
where this package is not installed.
"""

from __future__ import annotations

# The ensemble a client talks to: encoded image bytes in, softmax probabilities out.
ENSEMBLE_MODEL = "resnet18"
ENSEMBLE_INPUT = "IMAGE"
ENSEMBLE_OUTPUT = "PROBABILITIES"

# The steps of the ensemble.
PREPROCESS_MODEL = "preprocess"
PREPROCESS_INPUT = "IMAGE"
PREPROCESS_OUTPUT = "NORMALIZED_IMAGE"

# The classifier has two outputs, both [batch, 1000] float32, in this order: the raw logits, and
# softmax(logits) over the classes, computed inside the ONNX graph (no separate postprocessing
# model). The ensemble maps the classifier's probabilities straight to ENSEMBLE_OUTPUT.
ONNX_MODEL = "resnet18_onnx"
ONNX_INPUT = "input"
ONNX_OUTPUT = "logits"
ONNX_PROBABILITIES = "probabilities"
ONNX_OUTPUTS = (ONNX_OUTPUT, ONNX_PROBABILITIES)

# Load order for explicit model control: steps first, ensemble last.
SERVED_MODELS = (PREPROCESS_MODEL, ONNX_MODEL, ENSEMBLE_MODEL)

IMAGE_SIZE = 224
RESIZE_SIZE = 256
NUM_CLASSES = 1000
CHANNELS = 3

# torchvision's ResNet18_Weights.IMAGENET1K_V1.transforms() normalisation.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

LABELS_FILENAME = "labels.txt"
# Model-config parameter that carries where the weights came from (see export).
PROVENANCE_PARAMETER = "weights_provenance"

# Classifier-config parameter naming its numeric precision (bf16, f32, int8) where it is not the
# exported FP32; `health` shows it.
PRECISION_PARAMETER = "precision"

DEFAULT_URL = "127.0.0.1:8000"
URL_ENV_VAR = "RESNET18_TRITON_URL"

# `resnet18-triton serve` keeps Triton's restricted APIs (model repository, shared memory, ...)
# behind this header; the key comes from this variable (a random one when unset).
ADMIN_KEY_HEADER = "triton-admin-key"
ADMIN_KEY_ENV_VAR = "RESNET18_TRITON_ADMIN_KEY"
