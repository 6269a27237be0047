"""What makes one classifier of a repository: its names, class labels and preprocessing.

``Preprocessing`` is rendered into the parameters of the classifier's preprocess config, which the
Triton-side ``model.py`` reads back (``transform_from_config``); the defaults are torchvision's
ImageNet transform. ``load_labels`` reads a labels file in the three usual shapes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from resnet18_triton import contract
from resnet18_triton.contract import ClassifierNames
from resnet18_triton.errors import RepositoryError

INTERPOLATIONS = ("bilinear", "bicubic")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# resize_size 0: resize the whole image straight to input_size x input_size, no crop.
RESIZE_STRAIGHT = 0


@dataclass(frozen=True)
class Preprocessing:
    """Resize (shorter side to ``resize_size``, then centre crop; or straight to the input size
    when ``resize_size`` is ``RESIZE_STRAIGHT``), scale to [0, 1], ``(x - mean) / std``.

    ``input_size`` is the side of the square tensor the model takes (and the crop size).
    """

    resize_size: int = 256
    input_size: int = contract.IMAGE_SIZE
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    interpolation: str = "bilinear"

    def check(self, model_input_size: int | None = None) -> None:
        """Raise RepositoryError naming the setting that cannot work (or does not fit the
        model)."""
        if self.interpolation not in INTERPOLATIONS:
            raise RepositoryError(
                f"interpolation {self.interpolation!r} is not one of {', '.join(INTERPOLATIONS)}"
            )
        if self.input_size < 1:
            raise RepositoryError(f"input size {self.input_size} must be at least 1")
        if self.resize_size != RESIZE_STRAIGHT and self.resize_size < self.input_size:
            raise RepositoryError(
                f"resize size {self.resize_size} is smaller than the {self.input_size}-pixel crop "
                "the model needs; raise --resize-size or use --resize-straight"
            )
        if len(self.mean) != 3 or len(self.std) != 3:
            raise RepositoryError("--mean and --std take 3 values each (R,G,B)")
        if min(self.std) <= 0:
            raise RepositoryError(f"std {self.std} must be above 0 for every channel")
        if model_input_size is not None and model_input_size != self.input_size:
            raise RepositoryError(
                f"the preprocessing produces {self.input_size}x{self.input_size} images but the "
                f"model takes {model_input_size}x{model_input_size}; set --input-size "
                f"{model_input_size}"
            )

    @property
    def straight(self) -> bool:
        return self.resize_size == RESIZE_STRAIGHT

    def parameters(self) -> dict[str, str]:
        """The preprocess config's string parameters (read by ``transform_from_config``)."""
        return {
            "resize_size": str(self.resize_size),
            "input_size": str(self.input_size),
            "mean": ",".join(f"{value:.9g}" for value in self.mean),
            "std": ",".join(f"{value:.9g}" for value in self.std),
            "interpolation": self.interpolation,
        }

    @classmethod
    def from_parameters(cls, parameters: dict[str, str]) -> Preprocessing:
        """Inverse of ``parameters``; absent keys keep the defaults."""

        def triple(key: str, default: tuple[float, float, float]) -> tuple[float, float, float]:
            text = parameters.get(key, "")
            values = tuple(float(item) for item in text.split(",") if item.strip())
            return values or default  # type: ignore[return-value]

        return cls(
            resize_size=int(parameters.get("resize_size") or 256),
            input_size=int(parameters.get("input_size") or contract.IMAGE_SIZE),
            mean=triple("mean", IMAGENET_MEAN),
            std=triple("std", IMAGENET_STD),
            interpolation=parameters.get("interpolation") or "bilinear",
        )

    def describe(self) -> str:
        """One line, e.g. ``resize 256 bilinear, crop 224, mean (...), std (...)``."""
        resize = (
            f"resize straight to {self.input_size}x{self.input_size}"
            if self.straight
            else f"resize {self.resize_size}, crop {self.input_size}"
        )
        return f"{resize} {self.interpolation}, mean {self.mean}, std {self.std}"


@dataclass(frozen=True)
class Classifier:
    """One classifier to export: its names, labels (one per class) and preprocessing."""

    names: ClassifierNames = field(default_factory=ClassifierNames.of)
    labels: tuple[str, ...] = ()
    preprocessing: Preprocessing = field(default_factory=Preprocessing)

    @property
    def num_classes(self) -> int:
        return len(self.labels)


def classifier_names(name: str) -> ClassifierNames:
    """The model names of classifier ``name``; RepositoryError for a name Triton cannot serve."""
    try:
        return ClassifierNames.of(name)
    except ValueError as error:
        raise RepositoryError(str(error)) from None


def default_labels(count: int) -> list[str]:
    """``class_0`` ... ``class_<count-1>``, for a model exported without ``--labels``."""
    return [f"class_{index}" for index in range(count)]


def load_labels(path: Path) -> list[str]:
    """Labels in class order from one label per line, a JSON list, or an ImageFolder
    ``class_to_idx`` JSON mapping (name -> index, indices 0..N-1 each once).

    Raises RepositoryError naming what is wrong with the file.
    """
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise RepositoryError(f"cannot read labels file {path}: {error}") from error
    stripped = text.strip()
    if stripped.startswith(("[", "{")):
        try:
            data = json.loads(stripped)
        except json.JSONDecodeError as error:
            raise RepositoryError(f"labels file {path} is not valid JSON: {error}") from error
        labels = _labels_from_json(data, path)
    else:
        labels = [line.strip() for line in text.splitlines() if line.strip()]
    if not labels:
        raise RepositoryError(f"labels file {path} holds no labels")
    bad = [label for label in labels if "\n" in label or not label.strip()]
    if bad:
        raise RepositoryError(f"labels file {path} has empty or multi-line labels: {bad[:3]}")
    return labels


def _labels_from_json(data: object, path: Path) -> list[str]:
    if isinstance(data, list) and all(isinstance(item, str) for item in data):
        return [item.strip() for item in data]
    if isinstance(data, dict) and all(isinstance(value, int) for value in data.values()):
        indices = sorted(data.values())
        if indices != list(range(len(data))):
            raise RepositoryError(
                f"labels file {path}: the class_to_idx indices must be 0..{len(data) - 1}, each "
                "once"
            )
        by_index = {index: name for name, index in data.items()}
        return [str(by_index[index]).strip() for index in range(len(data))]
    raise RepositoryError(
        f"labels file {path} must be one label per line, a JSON list of strings, or a JSON "
        "class_to_idx mapping of name to index"
    )


def check_label_count(labels: list[str], num_classes: int, source: str) -> None:
    """Raise RepositoryError unless there is exactly one label per class."""
    if len(labels) != num_classes:
        raise RepositoryError(
            f"{source} has {len(labels)} labels but the model has {num_classes} classes; give "
            "exactly one label per class, in class order"
        )
