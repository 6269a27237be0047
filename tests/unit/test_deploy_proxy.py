"""The nginx template and the generated deployment files (real ``nginx -t``, no server)."""

from __future__ import annotations

import dataclasses
import os
import shutil
from pathlib import Path

import pytest

from resnet18_triton.deploy import proxy, render
from resnet18_triton.errors import ProxyError

REPO_ROOT = Path(__file__).resolve().parents[2]


def _nginx() -> str:
    path = shutil.which("nginx") or shutil.which("/usr/sbin/nginx")
    if path is None:
        message = "nginx not found; install it with `apt-get install nginx` (scripts/setup.sh)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return path


def _on_loopback(settings: proxy.ProxySettings, runtime: Path) -> proxy.ProxySettings:
    """The same settings with resolvable upstreams and a writable runtime dir, for ``nginx -t``.

    Service names (triton-1, triton) only resolve inside compose or Kubernetes; nginx refuses a
    config whose upstream host it cannot resolve.
    """
    upstreams = tuple(
        dataclasses.replace(upstream, host="127.0.0.1") for upstream in settings.upstreams
    )
    return dataclasses.replace(settings, upstreams=upstreams, runtime_dir=str(runtime))


def _check(settings: proxy.ProxySettings, tmp_path: Path) -> None:
    _nginx()
    config = tmp_path / "nginx.conf"
    config.write_text(proxy.render(settings))
    proxy.prepare_runtime_dir(tmp_path)
    proxy.check_config(config, tmp_path)


def test_body_limit_is_a_full_batch_of_maximal_images_plus_the_header() -> None:
    assert proxy.body_limit(8, 32 * 1024 * 1024) == 8 * (32 * 1024 * 1024 + 4) + 64 * 1024


def test_repository_body_limit_reads_the_preprocess_config(tmp_path: Path) -> None:
    from resnet18_triton.repository.configs import (
        ServingSettings,
        preprocess_model_config,
    )
    from resnet18_triton.repository.configs import render as render_config

    settings = ServingSettings(max_batch_size=4, max_image_bytes=1000)
    (tmp_path / "preprocess").mkdir()
    (tmp_path / "preprocess" / "config.pbtxt").write_text(
        render_config(preprocess_model_config(settings))
    )
    assert proxy.repository_body_limit(tmp_path) == proxy.body_limit(4, 1000)


def test_repository_body_limit_names_the_missing_config(tmp_path: Path) -> None:
    with pytest.raises(ProxyError, match="resnet18-triton export"):
        proxy.repository_body_limit(tmp_path)


def test_render_refuses_a_proxy_without_upstreams() -> None:
    with pytest.raises(ProxyError, match="at least one upstream"):
        proxy.render(proxy.ProxySettings(upstreams=()))


def test_each_replica_is_an_upstream_with_a_passive_health_check() -> None:
    settings = proxy.ProxySettings(
        upstreams=(proxy.Upstream("10.0.0.1", 1, 2), proxy.Upstream("10.0.0.2", 3, 4))
    )
    text = proxy.render(settings)
    for address in ("10.0.0.1:1", "10.0.0.2:3", "10.0.0.1:2", "10.0.0.2:4"):
        assert f"server {address} max_fails=1 fail_timeout={proxy.FAIL_TIMEOUT_S}s;" in text
    assert "proxy_next_upstream_tries 2;" in text
    assert f"client_max_body_size {settings.body_limit};" in text


def test_local_config_passes_nginx_syntax_check(tmp_path: Path) -> None:
    settings = proxy.ProxySettings(
        upstreams=(proxy.Upstream("127.0.0.1", 9000, 9001), proxy.Upstream("127.0.0.1", 9010)),
        runtime_dir=str(tmp_path),
    )
    _check(settings, tmp_path)


@pytest.mark.parametrize(
    "settings",
    [proxy.compose_settings(render.COMPOSE_REPLICAS), proxy.kubernetes_settings()],
    ids=["compose", "kubernetes"],
)
def test_container_configs_pass_nginx_syntax_check(
    settings: proxy.ProxySettings, tmp_path: Path
) -> None:
    _check(_on_loopback(settings, tmp_path), tmp_path)


def test_container_configs_write_only_under_tmp() -> None:
    for settings in (proxy.compose_settings(2), proxy.kubernetes_settings()):
        text = proxy.render(settings)
        paths = [
            line.split()[1].rstrip(";")
            for line in text.splitlines()
            if line.strip().startswith(("pid ", "client_body_temp_path", "proxy_temp_path"))
        ]
        assert paths and all(path.startswith("/tmp/") for path in paths), paths


def test_committed_generated_files_are_current() -> None:
    stale = [
        str(path)
        for path, content in render.rendered_files().items()
        if not (REPO_ROOT / path).is_file() or (REPO_ROOT / path).read_bytes() != content
    ]
    assert not stale, f"re-run `python -m resnet18_triton.deploy.render`: {stale} differ"


def test_every_generated_file_is_read_by_compose_or_kustomize() -> None:
    # A generated file that nothing mounts is dead weight the freshness test above still
    # demands be kept current; each must be named, relative to the file that reads it.
    readers = [REPO_ROOT / "docker-compose.yml", *REPO_ROOT.glob("deploy/**/kustomization.yaml")]
    unread = [
        str(path)
        for path in render.rendered_files()
        if not any(
            os.path.relpath(REPO_ROOT / path, reader.parent) in reader.read_text()
            for reader in readers
        )
    ]
    assert not unread, f"generated but read by no compose file or kustomization: {unread}"


def test_deploy_proxy_template_is_the_shipped_one() -> None:
    assert (REPO_ROOT / "deploy/proxy/nginx.conf.template").resolve() == proxy.TEMPLATE_PATH
