"""Names, shapes, defaults and limits shared by the exporter, the repository, server and client.

Each value is defined here once; everything else imports it. Triton-side model code
(``<repo>/*/1/model.py``, the Python-based ONNX Runtime backend) does not import this package: it
reads what it needs from its ``config.pbtxt``, which export writes from these values, so that the
repository also runs inside the official container where this package is not installed.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

# The ensemble a client talks to: encoded image bytes in, softmax probabilities out.
ENSEMBLE_MODEL = "resnet18"
ENSEMBLE_INPUT = "IMAGE"
ENSEMBLE_OUTPUT = "PROBABILITIES"

# The steps of the ensemble.
PREPROCESS_MODEL = "preprocess"
PREPROCESS_INPUT = "IMAGE"
PREPROCESS_OUTPUT = "PIXELS"  # uint8 RGB [3, 224, 224]; the classifier normalises

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

# The INT8 variant written by `resnet18-triton quantize`: its own classifier and ensemble (same
# preprocess step). Loaded after the FP32 models, ensemble last.
INT8_MODEL = "resnet18_int8"
INT8_ENSEMBLE_MODEL = "resnet18_int8_ensemble"
INT8_MODELS = (INT8_MODEL, INT8_ENSEMBLE_MODEL)
# The INT8 ensemble's two steps in one Python-backend model (same input and output as the
# ensemble), written by `quantize` beside the ensemble: the faster served path on CPU.
INT8_FUSED_MODEL = "resnet18_int8_fused"

IMAGE_SIZE = 224
NUM_CLASSES = 1000
# Classes a client shows per image unless asked for another number (CLI, library, web page).
DEFAULT_TOP_K = 5
CHANNELS = 3

# A classifier is one ensemble plus the models it runs, all named after the classifier's name.
DEFAULT_CLASSIFIER = ENSEMBLE_MODEL
# Triton model names become directory names and URL path segments: a safe subset, no dots.
CLASSIFIER_NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")


CANARY_SUFFIX = "_canary"
# The canary ensemble's config parameter: the percent of its classifier's requests the proxy
# sends it (0: none, the canary is ending).
CANARY_PERCENT_PARAMETER = "canary_percent"


@dataclass(frozen=True)
class ClassifierNames:
    """Every model name of one classifier, derived from its name (``ClassifierNames.of``).

    The default classifier keeps the historical names (``preprocess``, ``resnet18_onnx``,
    ``resnet18``); any other NAME gets ``NAME`` (the ensemble), ``NAME_preprocess`` and
    ``NAME_onnx``. Its variants' models (INT8, OpenVINO, fused) are named by
    ``repository.variants``.
    """

    name: str
    ensemble: str
    preprocess: str
    onnx: str

    @classmethod
    def of(cls, name: str = DEFAULT_CLASSIFIER) -> ClassifierNames:
        """The names of classifier ``name``; raises ValueError for a name Triton cannot serve."""
        check_classifier_name(name)
        preprocess = PREPROCESS_MODEL if name == DEFAULT_CLASSIFIER else f"{name}_preprocess"
        return cls(name=name, ensemble=name, preprocess=preprocess, onnx=f"{name}_onnx")

    @property
    def served(self) -> tuple[str, ...]:
        """The FP32 models in load order: steps first, the ensemble last."""
        return (self.preprocess, self.onnx, self.ensemble)

    @property
    def canary(self) -> str:
        """The second ensemble a canary adds: the same preprocessing, then ``canary_onnx``
        (``repository.versions``); the proxy sends it a share of the ensemble's requests."""
        return f"{self.name}{CANARY_SUFFIX}"

    @property
    def canary_onnx(self) -> str:
        """The ONNX model of a canary: the new version only, a model of its own so that starting
        or ending a canary never reloads a model the classifier serves."""
        return f"{self.onnx}{CANARY_SUFFIX}"

    @property
    def canary_models(self) -> tuple[str, str]:
        """A canary's models in load order: its ONNX model, then its ensemble."""
        return (self.canary_onnx, self.canary)


def check_classifier_name(name: str) -> None:
    """Raise ValueError unless ``name`` is a model name Triton and a file system both accept."""
    if not CLASSIFIER_NAME_PATTERN.fullmatch(name):
        raise ValueError(
            f"classifier name {name!r} is not allowed: use 1-64 letters, digits, '_' or '-', "
            "starting with a letter or digit"
        )


# Images per request the models accept (their config's max_batch_size), unless export is told
# otherwise; also the client's default batch size.
MAX_BATCH_SIZE = 8
# Input limits of the preprocessing, written into its config.pbtxt by export. 40 megapixels is a
# large photo; decompression bombs claim far more. 32 MiB bounds one encoded image.
MAX_IMAGE_PIXELS = 40_000_000
MAX_IMAGE_BYTES = 32 * 1024 * 1024

LABELS_FILENAME = "labels.txt"
# Each model directory of a repository: its config, and the one version directory export writes.
CONFIG_FILENAME = "config.pbtxt"
VERSION = "1"
# Model-config parameter that carries where the weights came from (see export).
PROVENANCE_PARAMETER = "weights_provenance"

# Classifier-config parameter naming its numeric precision (bf16, f32, int8) where it is not the
# exported FP32; `health` shows it.
PRECISION_PARAMETER = "precision"
# A fused model's config parameter naming the engine it runs its classifier on (the backend the
# classifier's own config names: onnxruntime, openvino).
FUSED_ENGINE_PARAMETER = "engine"

# Where the server listens by default: loopback only (safe default), Triton's standard ports.
DEFAULT_HOST = "127.0.0.1"
DEFAULT_HTTP_PORT = 8000
DEFAULT_GRPC_PORT = 8001
DEFAULT_METRICS_PORT = 8002
DEFAULT_URL = f"{DEFAULT_HOST}:{DEFAULT_HTTP_PORT}"
URL_ENV_VAR = "RESNET18_TRITON_URL"


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback addresses (127.0.0.0/8, ::1, bracketed or not)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


# Client defaults: connecting to a live server takes milliseconds, so waiting longer only delays
# "unreachable"; an answer may take long under load; requests in flight per client.
CONNECT_TIMEOUT_S = 5.0
REQUEST_TIMEOUT_S = 60.0
CLIENT_CONCURRENCY = 4
# Times the client resends a request the server refused as overloaded (429, or 503 from a full
# queue), after a jittered exponential backoff; 0 disables. Small, because under overload every
# retry is more load.
CLIENT_OVERLOAD_RETRIES = 3

# `resnet18-triton serve` keeps Triton's restricted APIs (model repository, shared memory, ...)
# behind this header; the key comes from this variable (a random one when unset).
ADMIN_KEY_HEADER = "triton-admin-key"
ADMIN_KEY_ENV_VAR = "RESNET18_TRITON_ADMIN_KEY"
# Or a file holding the key (mode 0600): keys never go on a command line the project controls.
ADMIN_KEY_FILE_ENV_VAR = "RESNET18_TRITON_ADMIN_KEY_FILE"
# The inference API key a client sends as ``Authorization: Bearer <key>`` to a proxy that asks for
# one (``cluster``, the compose and Kubernetes proxies): from this variable, or from the file this
# one names. The proxy stores only the keys' SHA-256 hashes.
API_KEY_ENV_VAR = "RESNET18_TRITON_API_KEY"
API_KEY_FILE_ENV_VAR = "RESNET18_TRITON_API_KEY_FILE"
# A PEM file of the CA certificate(s) the client trusts for an https:// URL, beside the system's
# (a proxy's self-signed or private-CA certificate).
CA_FILE_ENV_VAR = "RESNET18_TRITON_CA_FILE"
API_KEY_HEADER = "Authorization"
# A backend directory prepared ahead of time (the container image sets it): `serve` uses it as
# it is instead of copying the backends into a temporary directory at every start.
BACKEND_DIR_ENV_VAR = "RESNET18_TRITON_BACKEND_DIR"

# Preprocessing limits beyond the pixel and byte limits (the preprocess model's config parameters
# max_aspect_ratio and allowed_formats; the model file keeps the same built-in defaults).
MAX_ASPECT_RATIO = 32.0
ALLOWED_FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF")

# How long `serve` waits for the models to load (warm-up included), and how long in-flight
# requests get to finish on shutdown.
SERVER_READY_TIMEOUT_S = 180.0
SERVER_EXIT_TIMEOUT_S = 30
