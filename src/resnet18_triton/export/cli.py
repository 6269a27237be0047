"""``resnet18-triton export``: weights -> ONNX -> verification -> a filled model repository."""

from __future__ import annotations

from pathlib import Path

import click

from resnet18_triton.export.model_configs import ServingSettings, available_cores
from resnet18_triton.export.onnx_export import export_onnx
from resnet18_triton.export.repository import fill_repository
from resnet18_triton.export.verify import DEFAULT_ATOL, verify_onnx
from resnet18_triton.export.weights import imagenet_categories, load_resnet18
from resnet18_triton.layout import default_repository, onnx_model_path


@click.command("export")
@click.option(
    "--weights",
    default="imagenet",
    show_default=True,
    metavar="{imagenet,random,PATH}",
    help="Pretrained ImageNet weights (downloaded once), seeded random weights, or a "
    "local state-dict file.",
)
@click.option("--seed", default=0, show_default=True, type=int, help="Seed for --weights random.")
@click.option(
    "--repo",
    "repository",
    type=click.Path(file_okay=False, path_type=Path),
    default=default_repository,
    show_default="./model_repository",
    help="Model repository to fill.",
)
@click.option(
    "--opset",
    default=18,
    show_default=True,
    type=click.IntRange(17),
    help="ONNX opset (the dynamo exporter starts at 18; 17 uses the TorchScript exporter).",
)
@click.option(
    "--atol",
    default=DEFAULT_ATOL,
    show_default=True,
    type=click.FloatRange(0, 1e-3),
    help="Largest absolute logit difference ONNX Runtime may show against PyTorch.",
)
@click.option(
    "--cores",
    default=None,
    type=click.IntRange(1),
    help="Cores given to inference (default: the cores this process may use).",
)
@click.option(
    "--instances",
    "onnx_instances",
    default=1,
    show_default=True,
    type=click.IntRange(1),
    help="ONNX Runtime model instances; intra-op threads = cores // instances.",
)
@click.option("--max-batch-size", default=8, show_default=True, type=click.IntRange(1, 256))
@click.option(
    "--max-queue-delay-us",
    default=0,
    show_default=True,
    type=click.IntRange(0),
    help="Dynamic batching: how long a request may wait for others to join its batch.",
)
@click.option(
    "--max-image-pixels",
    default=40_000_000,
    show_default=True,
    type=click.IntRange(1),
    help="Preprocessing refuses images with more pixels (decompression bombs).",
)
@click.option(
    "--preprocess-instances",
    default=1,
    show_default=True,
    type=click.IntRange(1),
    help="Python preprocessing instances (one core each while decoding). 2 pays for "
    "large photos, whose decode dominates (12-MP JPEGs: 1.3x with --jpeg-draft-min-size "
    "256); no gain for ~500x375 images, +50 MB (docs/performance.md).",
)
@click.option(
    "--jpeg-draft-min-size",
    default=0,
    show_default=True,
    type=click.IntRange(0),
    help="Decode JPEGs at least twice this size per side at 1/2..1/8 scale in the DCT "
    "domain (Image.draft); 256 makes 12-MP JPEGs ~3x cheaper but moves their "
    "probabilities by up to ~1e-4, so 0 (off, exact torchvision preprocessing) is the "
    "default.",
)
@click.option(
    "--response-cache/--no-response-cache",
    default=False,
    show_default=True,
    help="Mark the ensemble and classifier configs `response_cache { enable: true }`. "
    "Triton then answers a repeated request from its cache, but only when the "
    "server runs with a cache (serve --response-cache-bytes N); harmless without.",
)
@click.option(
    "--warmup/--no-warmup",
    default=True,
    show_default=True,
    help="Add model_warmup samples (a generated JPEG for preprocess, zeros for the "
    "classifier) so the server is ready only once the models are warm.",
)
@click.option(
    "--openvino",
    is_flag=True,
    help="Container only: ask the native ONNX Runtime backend for its OpenVINO "
    "accelerator. The embedded server's Python-based backend ignores it.",
)
def export(
    weights: str,
    seed: int,
    repository: Path,
    opset: int,
    atol: float,
    cores: int | None,
    onnx_instances: int,
    max_batch_size: int,
    max_queue_delay_us: int,
    max_image_pixels: int,
    preprocess_instances: int = 1,
    jpeg_draft_min_size: int = 0,
    response_cache: bool = False,
    warmup: bool = True,
    openvino: bool = False,
) -> None:
    """Export ResNet-18 to ONNX, check it against PyTorch and fill the Triton model repository."""
    settings = ServingSettings.from_core_budget(
        cores or available_cores(),
        onnx_instances,
        max_batch_size=max_batch_size,
        max_queue_delay_us=max_queue_delay_us,
        max_image_pixels=max_image_pixels,
        preprocess_instances=preprocess_instances,
        jpeg_draft_min_size=jpeg_draft_min_size,
        response_cache=response_cache,
        warmup=warmup,
        openvino=openvino,
    )
    model, provenance = load_resnet18(weights, seed=seed)
    click.echo(f"weights: {provenance.describe()}", err=True)
    onnx_path = export_onnx(
        model, onnx_model_path(repository), opset=opset, dynamo=opset >= 18, provenance=provenance
    )
    report = verify_onnx(model, onnx_path, atol=atol)
    click.echo(f"verified: {report.summary()}", err=True)
    fill_repository(repository, settings, provenance.to_json(), imagenet_categories())
    click.echo(
        f"model repository ready: {repository} ({settings.onnx_instances} ONNX Runtime instance(s) x "
        f"{settings.intra_op_threads} intra-op threads on a {settings.cores}-core budget)",
        err=True,
    )
    if provenance.is_random:
        click.secho(
            "WARNING: random weights - served labels are meaningless (use --weights imagenet "
            "or --weights PATH for real predictions)",
            err=True,
            fg="yellow",
            bold=True,
        )
