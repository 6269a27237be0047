"""The nginx template and the generated deployment files (real ``nginx -t``, no server).

Behaviour with a real nginx but no Triton (401, 429, 413, TLS) is in test_deploy_edge.py.
"""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
from pathlib import Path

import pytest
from tritonclient.grpc import model_config_pb2 as model_config

from resnet18_triton.contract import CANARY_PERCENT_PARAMETER, CONFIG_FILENAME, ClassifierNames
from resnet18_triton.deploy import keys, proxy, render
from resnet18_triton.errors import ProxyError
from resnet18_triton.repository.configs import parser
from tests.edge_support import self_signed_certificate
from tests.support import missing

REPO_ROOT = Path(__file__).resolve().parents[2]


def _nginx() -> str:
    path = shutil.which("nginx") or shutil.which("/usr/sbin/nginx")
    if path is None:
        missing("nginx not found; install it with `apt-get install nginx` (scripts/setup.sh)")
    return path


def _on_loopback(settings: proxy.ProxySettings, runtime: Path) -> proxy.ProxySettings:
    """The same settings with resolvable upstreams, a writable runtime dir and the secrets'
    files present, for ``nginx -t``.

    Service names (triton-1, triton) only resolve inside compose or Kubernetes; nginx refuses a
    config whose upstream host it cannot resolve, or whose key map or certificate is missing.
    """
    upstreams = tuple(
        dataclasses.replace(upstream, host="127.0.0.1") for upstream in settings.upstreams
    )
    auth, tls, canaries = settings.auth, settings.tls, settings.canaries
    script = runtime / "edge.js"
    script.write_text(proxy.script_text())
    if auth is not None:
        key_map = runtime / "keys.map"
        key_map.write_text(keys.hash_map([keys.ApiKey("ci", "k" * 32)]))
        auth = dataclasses.replace(auth, script=str(script), key_map=str(key_map))
    if canaries is not None:
        canaries = dataclasses.replace(canaries, script=str(script))
    if tls is not None:
        certificate, key = self_signed_certificate(runtime / "tls")
        tls = proxy.Tls(str(certificate), str(key))
    return dataclasses.replace(
        settings, upstreams=upstreams, runtime_dir=str(runtime), auth=auth, tls=tls,
        canaries=canaries,
    )  # fmt: skip


def _check(settings: proxy.ProxySettings, tmp_path: Path) -> None:
    _nginx()
    config = tmp_path / "nginx.conf"
    config.write_text(proxy.render(settings))
    proxy.prepare_runtime_dir(tmp_path)
    proxy.check_config(config, tmp_path)


def test_body_limit_is_a_full_batch_of_maximal_images_plus_the_header() -> None:
    assert proxy.body_limit(8, 32 * 1024 * 1024) == 8 * (32 * 1024 * 1024 + 4) + 64 * 1024


def test_each_request_may_send_its_share_of_the_body_budget() -> None:
    limits = proxy.Limits(max_in_flight=16, body_budget_bytes=256 * proxy.MIB)
    assert limits.request_body_bytes(repository_limit=10**9) == 16 * proxy.MIB
    settings = proxy.ProxySettings(upstreams=(proxy.Upstream("127.0.0.1"),), limits=limits)
    assert f"client_max_body_size {16 * proxy.MIB};" in proxy.render(settings)


def test_the_share_never_exceeds_what_the_repository_accepts() -> None:
    limits = proxy.Limits(max_in_flight=1, body_budget_bytes=1024 * proxy.MIB)
    assert limits.request_body_bytes(repository_limit=5 * proxy.MIB) == 5 * proxy.MIB


def test_limits_refuse_a_budget_below_one_mib_per_request() -> None:
    with pytest.raises(ProxyError, match="at least 1 MiB"):
        proxy.Limits(max_in_flight=64, body_budget_bytes=32 * proxy.MIB)
    with pytest.raises(ProxyError, match="rate_per_s"):
        proxy.Limits(rate_per_s=0)


def test_repository_body_limit_reads_the_preprocess_config(tmp_path: Path) -> None:
    from resnet18_triton.repository.configs.builders import preprocess_model_config
    from resnet18_triton.repository.configs.parser import render as render_config
    from resnet18_triton.repository.configs.settings import ServingSettings

    settings = ServingSettings(max_batch_size=4, max_image_bytes=1000)
    (tmp_path / "preprocess").mkdir()
    (tmp_path / "preprocess" / "config.pbtxt").write_text(
        render_config(preprocess_model_config(settings))
    )
    assert proxy.repository_body_limit(tmp_path) == proxy.body_limit(4, 1000)


def test_repository_body_limit_reads_a_named_classifiers_config_when_it_is_the_only_one(
    tmp_path: Path,
) -> None:
    from resnet18_triton.contract import ClassifierNames
    from resnet18_triton.repository.classifier import Classifier
    from resnet18_triton.repository.configs.settings import ServingSettings
    from resnet18_triton.repository.writer import fill_repository

    digits = Classifier(ClassifierNames.of("digits"), tuple(str(d) for d in range(10)))
    fill_repository(tmp_path, ServingSettings(max_batch_size=2, max_image_bytes=500), "{}",
                    list(digits.labels), digits)  # fmt: skip
    assert not (tmp_path / "preprocess").exists()
    assert proxy.repository_body_limit(tmp_path) == proxy.body_limit(2, 500)


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


def _location_bodies(text: str) -> dict[str, str]:
    """location pattern -> its block, for the HTTP server (the first ``server``)."""
    http_server = text.split("    server {")[1]
    bodies = {}
    for part in http_server.split("        location ")[1:]:
        head, _, body = part.partition("{")
        bodies[head.strip()] = body.split("\n        }")[0]
    return bodies


def test_every_path_to_triton_but_health_needs_a_key_and_is_limited() -> None:
    settings = proxy.ProxySettings(
        upstreams=(proxy.Upstream("127.0.0.1"),),
        auth=proxy.Auth(key_map="/k.map", script="/edge.js"),
    )
    bodies = _location_bodies(proxy.render(settings))
    passing = {head: body for head, body in bodies.items() if "proxy_pass" in body}
    health = {"= /v2/health/live", "= /v2/health/ready"}
    assert health < set(passing)
    for head, body in passing.items():
        guarded = 'if ($api_key_name = "")' in body and "limit_req zone=per_client" in body
        assert guarded == (head not in health), head
        assert ("limit_conn in_flight" in body) == (head not in health), head


def test_without_keys_no_module_is_loaded_and_nothing_is_checked() -> None:
    text = proxy.render(proxy.ProxySettings(upstreams=(proxy.Upstream("127.0.0.1"),)))
    assert "load_module" not in text and "js_set" not in text and "$api_key_name = " not in text
    assert "limit_req zone=per_client" in text  # the limits hold with or without keys


def test_keys_load_njs_and_map_hashes_to_names_from_the_included_file() -> None:
    settings = proxy.ProxySettings(
        upstreams=(proxy.Upstream("127.0.0.1"),),
        auth=proxy.Auth(key_map="/secrets/k.map", script="/etc/edge.js"),
    )
    text = proxy.render(settings)
    assert text.splitlines()[5] == f"load_module {proxy.NJS_MODULE_PATH};"
    assert "js_import edge from /etc/edge.js;" in text
    assert "js_set $api_key_hash edge.bearerKeyHash;" in text
    assert "map $api_key_hash $api_key_entry {" in text and "include /secrets/k.map;" in text


def test_tls_turns_on_for_both_ports_with_modern_protocols_only() -> None:
    settings = proxy.ProxySettings(
        upstreams=(proxy.Upstream("127.0.0.1"),), tls=proxy.Tls("/c.pem", "/k.pem")
    )
    text = proxy.render(settings)
    assert "listen 127.0.0.1:8080 ssl;" in text
    assert "listen 127.0.0.1:8081 ssl http2;" in text
    assert "ssl_certificate /c.pem;" in text and "ssl_certificate_key /k.pem;" in text
    assert "ssl_protocols TLSv1.2 TLSv1.3;" in text


def test_refusals_are_json_with_www_authenticate_and_retry_after() -> None:
    text = proxy.render(proxy.ProxySettings(upstreams=(proxy.Upstream("127.0.0.1"),)))
    bodies = _location_bodies(text)
    assert "WWW-Authenticate 'Bearer" in bodies["@unauthorized"]
    assert "add_header Retry-After 1 always;" in bodies["@too_many"]
    for name in ("@unauthorized", "@too_large", "@too_many"):
        assert "default_type application/json;" in bodies[name], name
    assert "limit_req_status 429;" in text and "limit_conn_status 429;" in text


def test_the_access_log_names_the_key_and_logs_no_request_header() -> None:
    text = proxy.render(
        proxy.ProxySettings(upstreams=(proxy.Upstream("127.0.0.1"),), access_log="/a.log")
    )
    log_format = text[text.index("log_format edge") : text.index(";", text.index("log_format"))]
    assert "$api_key_name" in log_format
    assert "$http_" not in log_format and "$remote_user" not in log_format
    assert "access_log /a.log edge;" in text


def test_local_config_passes_nginx_syntax_check(tmp_path: Path) -> None:
    settings = proxy.ProxySettings(
        upstreams=(proxy.Upstream("127.0.0.1", 9000, 9001), proxy.Upstream("127.0.0.1", 9010)),
        runtime_dir=str(tmp_path),
    )
    _check(settings, tmp_path)


def test_local_config_with_keys_and_tls_passes_nginx_syntax_check(tmp_path: Path) -> None:
    settings = proxy.ProxySettings(
        upstreams=(proxy.Upstream("127.0.0.1", 9000, 9001),),
        auth=proxy.Auth(key_map="unused", script="unused"),
        tls=proxy.Tls("unused", "unused"),
    )
    _check(_on_loopback(settings, tmp_path), tmp_path)


def test_container_configs_ask_for_keys_and_tls_from_their_secrets() -> None:
    compose, kubernetes = proxy.compose_settings(2), proxy.kubernetes_settings()
    assert compose.auth is not None and compose.tls is not None
    assert compose.auth.key_map.startswith("/run/secrets/")
    assert compose.tls.certificate.startswith("/run/secrets/")
    assert kubernetes.auth is not None and kubernetes.tls is not None
    assert kubernetes.auth.key_map.startswith(proxy.KUBERNETES_KEY_HASHES_DIR)
    assert kubernetes.tls.key == f"{proxy.KUBERNETES_TLS_DIR}/tls.key"


@pytest.mark.parametrize(
    "settings",
    [
        proxy.compose_settings(render.COMPOSE_REPLICAS),
        proxy.compose_edge_settings(),
        proxy.kubernetes_settings(),
    ],
    ids=["compose", "compose-edge", "kubernetes"],
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


def test_a_tenants_large_requests_get_a_smaller_share_within_its_share() -> None:
    limits = proxy.Limits(key_in_flight=4, key_large_in_flight=1, max_in_flight=10)
    assert [limits.tenant_large_in_flight(weight) for weight in keys.WEIGHTS] == [1, 2, 3, 4]
    tight = proxy.Limits(key_in_flight=1, key_large_in_flight=2)
    assert tight.tenant_large_in_flight(1) == tight.tenant_in_flight(1) == 1
    capped = proxy.Limits(key_large_in_flight=2, max_large_in_flight=4)
    assert [capped.tenant_large_in_flight(weight) for weight in keys.WEIGHTS] == [2, 4, 4, 4]


def test_large_requests_are_capped_for_the_whole_proxy_with_or_without_keys() -> None:
    text = proxy.render(proxy.ProxySettings(upstreams=(proxy.Upstream("127.0.0.1"),)))
    bodies = _location_bodies(text)
    inference = next(body for head, body in bodies.items() if "/infer" in head)
    limit = proxy.Limits().max_large_in_flight
    assert f"limit_conn large_in_flight {limit};" in inference
    assert "limit_conn_zone $large_total zone=large_in_flight:1m;" in text


def test_bodies_of_a_million_bytes_or_more_count_against_the_large_share() -> None:
    settings = proxy.ProxySettings(
        upstreams=(proxy.Upstream("127.0.0.1"),),
        auth=proxy.Auth(key_map="/k.map", script="/edge.js"),
    )
    text = proxy.render(settings)
    pattern = re.search(r'map \$content_length \$large_body \{\s*"~(\S+)" 1;', text)
    assert pattern is not None, text
    large = re.compile(pattern.group(1))
    assert large.match(str(proxy.LARGE_BODY_BYTES)) and large.match("6800000")
    assert not large.match(str(proxy.LARGE_BODY_BYTES - 1)) and not large.match("0123456")
    for weight in keys.WEIGHTS:
        share = settings.limits.tenant_large_in_flight(weight)
        assert f"limit_conn large_w{weight} {share};" in text


def test_each_tenant_is_capped_by_its_weight_and_never_beyond_the_proxys_total() -> None:
    limits = proxy.Limits(key_in_flight=4, max_in_flight=10)
    assert [limits.tenant_in_flight(weight) for weight in keys.WEIGHTS] == [4, 8, 10, 10]
    settings = proxy.ProxySettings(
        upstreams=(proxy.Upstream("127.0.0.1"),),
        auth=proxy.Auth(key_map="/secrets/k.map", script="/etc/edge.js"),
        limits=limits,
    )
    text = proxy.render(settings)
    for weight, cap in zip(keys.WEIGHTS, (4, 8, 10, 10), strict=True):
        assert f"limit_conn_zone $tenant_w{weight} zone=tenant_w{weight}:1m;" in text
        assert f"limit_conn tenant_w{weight} {cap};" in text
    # Without keys every caller is anonymous: the per-address limits are the only ones.
    anonymous = proxy.render(dataclasses.replace(settings, auth=None))
    assert "tenant_w" not in anonymous


def _server_blocks(text: str) -> list[str]:
    """The text of each top-level ``server { ... }`` block of a rendered config."""
    blocks = []
    for start in [index for index in range(len(text)) if text.startswith("    server {", index)]:
        depth, end = 0, start
        for end in range(start, len(text)):
            depth += {"{": 1, "}": -1}.get(text[end], 0)
            if depth == 0 and text[end] == "}":
                break
        blocks.append(text[start : end + 1])
    return blocks


def test_tenant_metrics_load_lua_after_its_kit_and_count_every_request_of_both_ports() -> None:
    settings = proxy.ProxySettings(
        upstreams=(proxy.Upstream("127.0.0.1"),),
        auth=proxy.Auth(key_map="/k.map", script="/edge.js"),
        metrics=proxy.TenantMetrics("127.0.0.1:9182"),
    )
    text = proxy.render(settings)
    loads = [line for line in text.splitlines() if line.startswith("load_module ")]
    modules = (proxy.NJS_MODULE_PATH, *proxy.LUA_MODULE_PATHS)
    assert loads == [f"load_module {module};" for module in modules]
    assert f"lua_shared_dict {proxy.TENANT_METRICS_DICT};" in text
    traffic, grpc, metrics = _ordered_servers(text)
    for block in (traffic, grpc):
        assert "tenant_metrics.log()" in block
    assert "listen 127.0.0.1:9182;" in metrics and "tenant_metrics.collect()" in metrics
    assert "proxy_pass" not in metrics and "grpc_pass" not in metrics


def test_with_keys_and_lua_a_request_over_its_keys_share_waits_for_a_slot_before_its_429() -> None:
    limits = proxy.Limits(key_in_flight=3, max_in_flight=10)
    settings = proxy.ProxySettings(
        upstreams=(proxy.Upstream("127.0.0.1"),),
        auth=proxy.Auth(key_map="/k.map", script="/edge.js"),
        metrics=proxy.TenantMetrics("127.0.0.1:9182"),
        limits=limits,
    )
    text = proxy.render(settings)
    assert f"lua_shared_dict {proxy.TENANT_SLOTS_DICT};" in text
    # The queue's numbers are the proxy's: each weight's share (within the total), Retry-After.
    assert "tenant_queue.shares = { [1] = 3, [2] = 6, [3] = 9, [4] = 10 }" in text
    assert f"tenant_queue.wait_s = {limits.retry_after_s}" in text
    traffic, grpc, _ = _ordered_servers(text)
    for block in (traffic, grpc):
        assert block.count("tenant_queue.admit()") == block.count("limit_conn in_flight ") >= 1
        assert "tenant_queue.release()" in block
        # limit_conn counts the waiting requests too: the share in flight, the share waiting.
        for weight in keys.WEIGHTS:
            assert f"limit_conn tenant_w{weight} {2 * limits.tenant_in_flight(weight)};" in block
    # Without keys there is no tenant to queue for; without Lua, the share refuses at once.
    for other in (
        dataclasses.replace(settings, auth=None),
        dataclasses.replace(settings, metrics=None),
    ):
        rendered = proxy.render(other)
        assert "tenant_queue.admit" not in rendered and "tenant_slot" not in rendered


def _ordered_servers(text: str) -> tuple[str, str, str]:
    """The HTTP, gRPC and metrics server blocks of a config rendered with tenant metrics."""
    blocks = _server_blocks(text)
    http = next(block for block in blocks if "listen 127.0.0.1:8080" in block)
    grpc = next(block for block in blocks if "http2;" in block)
    metrics = next(block for block in blocks if "tenant_metrics.collect()" in block)
    return http, grpc, metrics


def test_without_tenant_metrics_no_lua_is_loaded_or_run() -> None:
    text = proxy.render(proxy.ProxySettings(upstreams=(proxy.Upstream("127.0.0.1"),)))
    assert "_by_lua" not in text and "lua_shared_dict" not in text and "load_module" not in text


def test_container_proxies_serve_tenant_metrics_on_the_port_their_manifests_open() -> None:
    compose, kubernetes = proxy.compose_settings(2), proxy.kubernetes_settings()
    assert compose.metrics == proxy.TenantMetrics("127.0.0.1:8082")
    assert kubernetes.metrics == proxy.TenantMetrics("8082")
    deployment = (REPO_ROOT / "deploy/kubernetes/proxy-deployment.yaml").read_text()
    policy = (REPO_ROOT / "deploy/kubernetes/networkpolicy.yaml").read_text()
    assert "{name: metrics, containerPort: 8082}" in deployment
    proxy_policy = policy[policy.index("name: triton-proxy") :]
    assert "kubernetes.io/metadata.name: monitoring" in proxy_policy
    assert "{protocol: TCP, port: 8082}" in proxy_policy


def test_canaries_route_every_models_inference_path_by_the_share_read_from_the_repository(
    tmp_path: Path,
) -> None:
    script = tmp_path / "edge.js"
    settings = proxy.ProxySettings(
        upstreams=(proxy.Upstream("127.0.0.1", 9000, 9001),),
        runtime_dir=str(tmp_path),
        auth=proxy.Auth(key_map="unused", script=str(script)),
        canaries=proxy.CanaryRouting(repository="/srv/models", script=str(script)),
    )
    text = proxy.render(settings)
    assert text.count("js_import edge from") == 1 and text.count(proxy.NJS_MODULE_PATH) == 1
    assert "js_set $routed_model edge.routedModel;" in text
    bodies = _location_bodies(text)
    routed = bodies["~ ^/v2/models/(?<canary_model>[^/]+)/infer$"]
    assert 'set $canary_repository "/srv/models";' in routed
    # Requests for the named model pass as they came; those the share picks go on inside.
    assert f"rewrite ^ {proxy.CANARY_PATH} last;" in routed
    assert routed.rstrip().endswith("proxy_pass http://triton_http;")
    picked = bodies[f"= {proxy.CANARY_PATH}"]
    assert "internal;" in picked
    assert "proxy_pass http://triton_http/v2/models/${canary_model}_canary/infer;" in picked
    # A canary gone before the request arrived: Triton says 400 or 404; the named model instead.
    assert "error_page 400 404 = @canary_gone;" in picked
    gone = bodies["@canary_gone"]
    assert gone.strip() == "proxy_pass http://triton_http/v2/models/$canary_model/infer;"
    # The same key check and limits as every other path to Triton, on both ways.
    for body in (routed, picked):
        assert 'if ($api_key_name = "")' in body and "limit_conn large_in_flight" in body
    # Before the generic model location, which nginx would otherwise pick (first regex match).
    assert text.index("(?<canary_model>") < text.index("location ~ ^/v2/models/[^/]+(/versions")
    _check(_on_loopback(settings, tmp_path), tmp_path)


def test_without_canary_routing_no_request_is_rerouted_and_no_njs_is_loaded() -> None:
    settings = proxy.ProxySettings(upstreams=(proxy.Upstream("127.0.0.1", 9000, 9001),))
    text = proxy.render(settings)
    assert "routed_model" not in text and "js_import" not in text and "load_module" not in text


def test_the_njs_script_reads_the_canary_share_where_and_as_the_repository_writes_it() -> None:
    script = proxy.script_text()
    names = ClassifierNames.of("digits")
    assert f"const CANARY_SUFFIX = '{names.canary.removeprefix(names.name)}';" in script
    assert f"'/{CONFIG_FILENAME}'" in script
    assert "export default {bearerKeyHash, routedModel};" in script
    # The script's pattern (the same syntax in JavaScript and Python) on configs rendered as
    # the repository renders a canary's ensemble, with and without other parameters around it.
    share = re.compile(re.search(r"const SHARE = /(.+)/;", script).group(1))
    for percent, others in ((10, {}), (100, {"a": "1", "z": "2"})):
        config = model_config.ModelConfig(name=names.canary, platform="ensemble")
        for key, value in {**others, CANARY_PERCENT_PARAMETER: str(percent)}.items():
            config.parameters[key].string_value = value
        found = share.search(parser.render(config))
        assert found is not None and found.group(1) == str(percent)
