"""The OpenAPI 3.1 schema of the app's JSON API, served at ``/openapi.json``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from resnet18_triton import contract
from resnet18_triton.ui.uploads import IMAGE_FIELD, UploadLimits

_ERROR = {
    "type": "object",
    "required": ["error"],
    "properties": {"error": {"type": "string", "description": "What is wrong, for a person."}},
}
_PREDICTION = {
    "type": "object",
    "required": ["label", "index", "probability"],
    "properties": {
        "label": {"type": "string"},
        "index": {"type": "integer", "minimum": 0, "maximum": contract.NUM_CLASSES - 1},
        "probability": {"type": "number", "minimum": 0, "maximum": 1},
    },
}
_RESULT = {
    "description": "One image, exactly as `resnet18-triton classify --json` prints it.",
    "type": "object",
    "required": ["image"],
    "properties": {
        "image": {"type": "string", "description": "The uploaded file's name."},
        "top": {"type": "array", "items": {"$ref": "#/components/schemas/Prediction"}},
        "model_version": {
            "type": "string",
            "description": "The version of the classifier that computed this answer.",
        },
        "error": {"type": "string", "description": "Triton's reason for rejecting the image."},
    },
}
_CLASSIFICATION = {
    "type": "object",
    "required": ["model", "model_version", "latency_ms", "results"],
    "properties": {
        "model": {"type": "string"},
        "model_version": {"type": ["string", "null"]},
        "latency_ms": {"type": "number", "description": "Time spent waiting for Triton."},
        "results": {"type": "array", "items": {"$ref": "#/components/schemas/Result"}},
        "error": {"type": "string", "description": "Present when some image failed (400)."},
    },
}


def _json(description: str, schema: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{schema}"}}},
    }


def openapi_schema(models: Sequence[str], limits: UploadLimits) -> dict[str, Any]:
    """The schema, with the models and limits the app was started with."""
    classify = {
        "summary": "Classify uploaded images",
        "description": (
            f"Send images as multipart/form-data, field `{IMAGE_FIELD}` (repeatable): "
            f"`curl -F {IMAGE_FIELD}=@cat.jpg http://HOST:PORT/v1/classify`. At most "
            f"{limits.max_files} images, {limits.max_file_bytes} bytes each, "
            f"{limits.max_request_bytes} bytes in all. Uploads are held in memory only."
        ),
        "parameters": [
            {
                "name": "top_k",
                "in": "query",
                "schema": {"type": "integer", "minimum": 1, "maximum": contract.NUM_CLASSES},
            },
            {
                "name": "model",
                "in": "query",
                "schema": {"type": "string", "enum": list(models)},
            },
        ],
        "requestBody": {
            "required": True,
            "content": {
                "multipart/form-data": {
                    "schema": {
                        "type": "object",
                        "required": [IMAGE_FIELD],
                        "properties": {
                            IMAGE_FIELD: {
                                "type": "array",
                                "items": {"type": "string", "format": "binary"},
                            }
                        },
                    }
                }
            },
        },
        "responses": {
            "200": _json("Every image classified.", "Classification"),
            "400": _json(
                "Some image rejected (its result carries Triton's message), or a bad request "
                "(only `error`).",
                "Classification",
            ),
            "413": _json("An image or the request is over its size limit.", "Error"),
            "503": _json("Too many requests in flight, or Triton unavailable.", "Error"),
        },
    }
    return {
        "openapi": "3.1.0",
        "info": {"title": "resnet18-triton ui", "version": "1"},
        "paths": {
            "/v1/classify": {"post": classify},
            "/v1/models": {
                "get": {
                    "summary": "The classifiers ready to answer, and the upload limits",
                    "responses": {"200": {"description": "Ready models and limits."}},
                }
            },
        },
        "components": {
            "schemas": {
                "Error": _ERROR,
                "Prediction": _PREDICTION,
                "Result": _RESULT,
                "Classification": _CLASSIFICATION,
            }
        },
    }
