"""Render the nginx configuration that fronts N Triton replicas, and run nginx unprivileged.

One template (``nginx.conf.template`` beside this module) serves every deployment: the local
``resnet18-triton cluster`` (replicas on loopback ports, nginx writing only to a runtime
directory), docker-compose and Kubernetes (replicas by service name). Placeholders are
``@{name}``; nginx's own ``$variables`` pass through untouched.

The public edge is in the same file: API keys checked against their SHA-256 hashes (``Auth``,
with ``keys``), TLS termination (``Tls``), and per-client and total limits on requests and body
bytes (``Limits``). Health stays open for probes; restricted and metrics paths stay closed.
"""

from __future__ import annotations

import shutil
import string
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from resnet18_triton import contract
from resnet18_triton.deploy.keys import WEIGHTS
from resnet18_triton.errors import ProxyError

TEMPLATE_PATH = Path(__file__).resolve().parent / "nginx.conf.template"
# Room for the JSON inference header (names, shapes, parameters) in front of the binary data.
HEADER_ALLOWANCE_BYTES = 64 * 1024
# Triton's binary tensor format puts a 4-byte length before each BYTES element.
LENGTH_PREFIX_BYTES = 4
# Defaults of the exported preprocess config (ServingSettings), when none can be read.
DEFAULT_MAX_BATCH_SIZE = contract.MAX_BATCH_SIZE
DEFAULT_MAX_IMAGE_BYTES = contract.MAX_IMAGE_BYTES
# A replica that refused or dropped a connection is left out this long before it is tried again.
FAIL_TIMEOUT_S = 5
# Debian's libnginx-mod-http-js (njs 0.7.9); the proxy image installs the same package.
NJS_MODULE_PATH = "/usr/lib/nginx/modules/ngx_http_js_module.so"
NJS_SCRIPT_NAME = "edge.js"
# The njs script: API-key hashes and canary routing (``script_text`` gives deployments a copy).
NJS_SCRIPT = Path(__file__).resolve().parent / NJS_SCRIPT_NAME
# Debian's libnginx-mod-http-lua and the NDK it needs (loaded first), for the tenant metrics.
LUA_MODULE_PATHS = (
    "/usr/lib/nginx/modules/ndk_http_module.so",
    "/usr/lib/nginx/modules/ngx_http_lua_module.so",
)
TENANT_METRICS_SCRIPT = Path(__file__).resolve().parent / "tenant_metrics.lua"
# With keys and the Lua module: a request over its key's share waits for a slot first.
TENANT_QUEUE_SCRIPT = Path(__file__).resolve().parent / "tenant_queue.lua"
# One counter per tenant with requests in flight.
TENANT_SLOTS_DICT = "tenant_slots 1m"
# The proxy's ports: HTTP, gRPC, then its tenant metrics (cluster, compose's replicas, Kubernetes).
METRICS_PORT = 8082
# Room for the counters of a few thousand tenants (about 25 each).
TENANT_METRICS_DICT = "tenant_metrics 4m"
MIB = 1024 * 1024
# A body that declares at least this many bytes is a large request: a photo is about 0.1 MB, the
# flood's 6.8 MB PNG costs about ten photos' CPU. A power of ten, so nginx matches it by digits.
LARGE_BODY_DIGITS = 7
LARGE_BODY_BYTES = 10 ** (LARGE_BODY_DIGITS - 1)


@dataclass(frozen=True)
class Limits:
    """What one proxy lets through, per client address, per tenant and in total.

    ``rate_per_s`` and ``burst``: limit_req per client address (a token bucket; requests beyond
    the burst get 429 at once, with ``Retry-After``). ``client_connections``: requests one client
    address may have in flight. ``key_in_flight``: requests one API key of weight 1 may have in
    flight, from all its addresses together; a key of weight w (``keys.ApiKey.weight``) may have
    w times as many, at most ``max_in_flight`` (so a tenant alone gets that much, never more).
    ``key_large_in_flight``: of those, how many may declare a body of ``LARGE_BODY_BYTES`` or
    more (times the weight): a large image costs its replica many photos' time, so a key's costly
    requests get a smaller share than its cheap ones. ``max_large_in_flight``: large requests the
    whole proxy passes at once, keys or not; it is what bounds the replicas' memory and queue
    when anyone floods with large images.
    ``max_in_flight``: requests the whole proxy passes at once (429 beyond).
    ``body_budget_bytes``: request bodies the proxy holds at once (it buffers each body before it
    goes upstream, in its temp dir); each request gets an equal share,
    ``body_budget_bytes // max_in_flight``, capped by what the model repository can accept.
    """

    rate_per_s: int = 100
    burst: int = 200
    client_connections: int = 8
    key_in_flight: int = 4
    key_large_in_flight: int = 2
    max_in_flight: int = 16
    max_large_in_flight: int = 4
    body_budget_bytes: int = 256 * MIB

    def __post_init__(self) -> None:
        for name in (
            "rate_per_s",
            "burst",
            "client_connections",
            "key_in_flight",
            "key_large_in_flight",
            "max_in_flight",
            "max_large_in_flight",
        ):
            if getattr(self, name) < 1:
                raise ProxyError(f"the proxy limit {name} must be at least 1")
        if self.body_budget_bytes < self.max_in_flight * MIB:
            raise ProxyError(
                "the body budget must leave each request in flight at least 1 MiB: raise it or "
                "lower max_in_flight"
            )

    @property
    def retry_after_s(self) -> int:
        """Seconds a refused client should wait: at ``rate_per_s`` >= 1 the bucket has room for
        one more request within 1 s, and an in-flight slot frees as soon as a request ends."""
        return 1

    def tenant_in_flight(self, weight: int) -> int:
        """Requests a key of ``weight`` may have in flight."""
        return min(weight * self.key_in_flight, self.max_in_flight)

    def tenant_large_in_flight(self, weight: int) -> int:
        """Requests with a large body a key of ``weight`` may have in flight (within its share and
        the proxy's)."""
        return min(
            weight * self.key_large_in_flight,
            self.tenant_in_flight(weight),
            self.max_large_in_flight,
        )

    def request_body_bytes(self, repository_limit: int) -> int:
        """client_max_body_size: a request's share of the budget, at most ``repository_limit``."""
        return min(self.body_budget_bytes // self.max_in_flight, repository_limit)


@dataclass(frozen=True)
class Auth:
    """API-key checking: nginx hashes the bearer token (njs) and looks the hash up in a map.

    ``key_map``: the file of ``"sha256" "name:weight";`` lines (``keys.hash_map``), included into
    the config; ``script``: where the njs script is (``script_text`` gives its text).
    """

    key_map: str
    script: str
    module: str = NJS_MODULE_PATH


@dataclass(frozen=True)
class TenantMetrics:
    """Per-tenant counters (answers, refusals by kind, answer time, replica time, bytes) that
    nginx keeps itself (Lua, ``tenant_metrics.lua``) and serves to Prometheus at ``GET
    /metrics`` on ``listen``, a listener of its own that passes nothing upstream."""

    listen: str
    modules: tuple[str, ...] = LUA_MODULE_PATHS

    @staticmethod
    def available() -> bool:
        """True when this machine's nginx has the Lua module the metrics need."""
        return all(Path(module).exists() for module in LUA_MODULE_PATHS)


# The internal location of the requests a canary's share picked (never reachable from outside).
CANARY_PATH = "/resnet18-canary-infer"


@dataclass(frozen=True)
class CanaryRouting:
    """Canaries (``repository.versions``) routed at the proxy: an inference request for a model
    goes to its canary ensemble for the share the canary's config names. The njs script at
    ``script`` reads that share from the model repository at ``repository`` (as the proxy sees
    it) on every request, so canaries start, change and end with no reload of nginx. Requests
    that name a version, and gRPC ones (the model is inside the body), go where they ask."""

    repository: str
    script: str
    module: str = NJS_MODULE_PATH

    @staticmethod
    def available() -> bool:
        """True when this machine's nginx has the njs module the routing needs."""
        return Path(NJS_MODULE_PATH).exists()


@dataclass(frozen=True)
class Tls:
    """TLS termination at the proxy: PEM certificate (chain) and its private key."""

    certificate: str
    key: str


class _Template(string.Template):
    delimiter = "@"


@dataclass(frozen=True)
class Upstream:
    """One Triton replica as the proxy reaches it: host (name or address) and its two ports."""

    host: str
    http_port: int = contract.DEFAULT_HTTP_PORT
    grpc_port: int = contract.DEFAULT_GRPC_PORT


@dataclass(frozen=True)
class ProxySettings:
    """Everything the rendered configuration depends on."""

    upstreams: tuple[Upstream, ...]
    listen_http: str = "127.0.0.1:8080"
    listen_grpc: str = "127.0.0.1:8081"
    max_body_bytes: int = 0  # 0: derived from the default batch size and image byte limit
    runtime_dir: str = "/tmp/nginx"
    error_log: str = "stderr"
    access_log: str = "off"
    worker_processes: str = "1"
    # "user group" for the workers; only when nginx starts as root, which would otherwise run
    # them as nobody, unable to write the runtime dir (request bodies over 1 MiB spill there).
    user: str = ""
    auth: Auth | None = None
    tls: Tls | None = None
    limits: Limits = Limits()
    metrics: TenantMetrics | None = None
    canaries: CanaryRouting | None = None

    @property
    def repository_limit(self) -> int:
        """The largest request the model repository can accept (``max_body_bytes`` if set)."""
        return self.max_body_bytes or body_limit(DEFAULT_MAX_BATCH_SIZE, DEFAULT_MAX_IMAGE_BYTES)

    @property
    def body_limit(self) -> int:
        """client_max_body_size: the budget's share per request, within the repository's limit."""
        return self.limits.request_body_bytes(self.repository_limit)


def body_limit(max_batch_size: int, max_image_bytes: int) -> int:
    """Largest request body the ensemble can accept: a full batch of maximal images + header."""
    return max_batch_size * (max_image_bytes + LENGTH_PREFIX_BYTES) + HEADER_ALLOWANCE_BYTES


def repository_body_limit(repository: Path) -> int:
    """``body_limit`` of the repository: the largest over its classifiers' preprocess configs
    (max_batch_size, max_image_bytes), so that no classifier's largest request is refused.

    Needs Triton's ModelConfig schema (``tritonclient[grpc]``); raises ``ProxyError`` when a
    config is missing.
    """
    from resnet18_triton.contract import ClassifierNames
    from resnet18_triton.repository.configs.parser import read_config_file
    from resnet18_triton.repository.layout import CONFIG_FILENAME, classifiers

    limits = []
    for names in classifiers(repository) or [ClassifierNames.of()]:
        path = repository / names.preprocess / CONFIG_FILENAME
        config = read_config_file(path)
        if config is None:
            raise ProxyError(
                f"{path} is missing: run `resnet18-triton export` to fill the repository first"
            )
        parameter = config.parameters.get("max_image_bytes")
        image_bytes = int(parameter.string_value) if parameter else DEFAULT_MAX_IMAGE_BYTES
        limits.append(body_limit(config.max_batch_size or 1, image_bytes))
    return max(limits)


def _server_lines(upstreams: Sequence[Upstream], grpc: bool) -> str:
    lines = []
    for upstream in upstreams:
        port = upstream.grpc_port if grpc else upstream.http_port
        lines.append(
            f"        server {upstream.host}:{port} max_fails=1 fail_timeout={FAIL_TIMEOUT_S}s;"
        )
    return "\n".join(lines)


def _auth_http(auth: Auth | None) -> str:
    if auth is None:
        # Without keys every caller is anonymous; the log format still names the key.
        return '    map $remote_addr $api_key_name {\n        default "-";\n    }'
    return "\n".join(
        [
            "    js_set $api_key_hash edge.bearerKeyHash;",
            "    # SHA-256 hashes are 64 characters: more than the default bucket holds.",
            "    map_hash_bucket_size 128;",
            "    map $api_key_hash $api_key_entry {",
            '        default "";',
            f"        include {auth.key_map};",
            "    }",
            "    map $api_key_entry $api_key_name {",
            '        "~^(?<tenant>[^:]+)" $tenant;',
            '        default "";',
            "    }",
            *_tenant_zones(),
        ]
    )


def _tenant_zones() -> list[str]:
    """One limit_conn zone per key weight, keyed by the names of that weight's keys (empty, so not
    counted, for the others): limit_conn's number is fixed per directive, not per key. The same
    again for each weight's requests with a large body."""
    lines = ["    # Requests in flight per tenant (API key name) by weight, and its large ones."]
    for weight in WEIGHTS:
        # A map of "hash" "name"; lines, as earlier versions wrote, means weight 1.
        suffix = "(:1)?" if weight == 1 else f":{weight}"
        lines += [
            f"    map $api_key_entry $tenant_w{weight} {{",
            f'        "~^(?<tenant>[^:]+){suffix}$" $tenant;',
            '        default "";',
            "    }",
            f"    limit_conn_zone $tenant_w{weight} zone=tenant_w{weight}:1m;",
            f'    map "$large_body:$tenant_w{weight}" $large_tenant_w{weight} {{',
            '        "~^1:(?<tenant>.+)$" $tenant;',
            '        default "";',
            "    }",
            f"    limit_conn_zone $large_tenant_w{weight} zone=large_w{weight}:1m;",
        ]
    return lines


def _large_http() -> str:
    """The large-body test and the proxy-wide count of large requests in flight."""
    return "\n".join(
        [
            f"    # A body that declares {LARGE_BODY_BYTES} bytes or more: a large, costly one.",
            "    map $content_length $large_body {",
            f'        "~^[1-9][0-9]{{{LARGE_BODY_DIGITS - 1},}}$" 1;',
            "        default 0;",
            "    }",
            "    map $large_body $large_total {",
            "        1 total;",
            '        default "";',
            "    }",
            "    limit_conn_zone $large_total zone=large_in_flight:1m;",
        ]
    )


def _njs_http(settings: ProxySettings) -> str:
    """The njs script's import, when API keys or canaries use it (one script for both)."""
    scripts = {used.script for used in (settings.auth, settings.canaries) if used is not None}
    if not scripts:
        return "    # No njs: no API keys, no canary routing."
    if len(scripts) > 1:
        raise ProxyError(f"API keys and canaries must use the same njs script, not {scripts}")
    return f"    js_import edge from {scripts.pop()};"


def _canary_http(canaries: CanaryRouting | None) -> str:
    if canaries is None:
        return "    # No canary routing: every request goes to the model it names."
    return "\n".join(
        [
            "    # Canaries: a share of a classifier's inference requests to its canary ensemble,",
            "    # read from the model repository on each request (edge.js, routedModel).",
            "    js_set $routed_model edge.routedModel;",
        ]
    )


def _canary_locations(canaries: CanaryRouting | None, guard: str) -> str:
    """The inference path of every model, routed by its canary's share (with the same key check
    and limits as every path to Triton). A request is picked for a canary when its headers
    arrive; if the canary is unloaded before the request reaches Triton (its body took longer
    than ending a canary waits), Triton answers 404 (400 for a model it never loaded), and the
    request is sent to the model it named instead. So is a bad request the canary refused, which
    the named model then refuses too; requests not picked are never sent twice. The handler runs
    once per request, in the ``if``: a picked request goes to the canary by its name."""
    if canaries is None:
        return "# no canary routing"
    return f"""location ~ ^/v2/models/(?<canary_model>[^/]+)/infer$ {{
            {guard}
            set $canary_repository "{canaries.repository}";
            if ($routed_model != $canary_model) {{
                rewrite ^ {CANARY_PATH} last;
            }}
            proxy_pass http://triton_http;
        }}
        location = {CANARY_PATH} {{
            internal;
            {guard}
            proxy_intercept_errors on;
            error_page 400 404 = @canary_gone;
            proxy_pass http://triton_http/v2/models/${{canary_model}}{contract.CANARY_SUFFIX}/infer;
        }}
        location @canary_gone {{
            proxy_pass http://triton_http/v2/models/$canary_model/infer;
        }}"""


def _tls_http(tls: Tls | None) -> str:
    if tls is None:
        return "    # No TLS: plain HTTP (loopback, or TLS terminated in front of this proxy)."
    return "\n".join(
        [
            f"    ssl_certificate {tls.certificate};",
            f"    ssl_certificate_key {tls.key};",
            "    ssl_protocols TLSv1.2 TLSv1.3;",
            "    ssl_prefer_server_ciphers off;",
            "    # Resumed sessions skip the full handshake: a client that reconnects pays less.",
            "    ssl_session_cache shared:edge_tls:4m;",
            "    ssl_session_timeout 1h;",
            "    ssl_session_tickets off;",
        ]
    )


def _load_modules(settings: ProxySettings) -> str:
    modules = [used.module for used in (settings.auth, settings.canaries) if used is not None]
    if settings.metrics is not None:
        modules += settings.metrics.modules
    modules = list(dict.fromkeys(modules))
    if not modules:
        return "# no modules: no API keys, no canary routing, no tenant metrics"
    return "\n".join(f"load_module {module};" for module in modules)


def _queued(settings: ProxySettings) -> bool:
    """True when a keyed request over its key's share waits for a slot (``tenant_queue.lua``)
    before its 429: with API keys and nginx's Lua module (the tenant metrics' module)."""
    return settings.auth is not None and settings.metrics is not None


def _lua_chunk(script: Path) -> str:
    """A Lua file as the body of a function in ``init_by_lua_block`` (its value: the module)."""
    text = script.read_text().rstrip("\n")
    indented = "\n".join(f"        {line}" if line else "" for line in text.splitlines())
    return f"(function()\n{indented}\n        end)()"


def _queue_init(settings: ProxySettings) -> list[str]:
    """The tenant queue's lines inside ``init_by_lua_block``, with the proxy's numbers."""
    if not _queued(settings):
        return []
    limits = settings.limits
    shares = ", ".join(f"[{weight}] = {limits.tenant_in_flight(weight)}" for weight in WEIGHTS)
    return [
        "        -- resnet18_triton/deploy/tenant_queue.lua; its value is `tenant_queue`.",
        f"        tenant_queue = {_lua_chunk(TENANT_QUEUE_SCRIPT)}",
        f"        tenant_queue.shares = {{ {shares} }}",
        f"        tenant_queue.wait_s = {limits.retry_after_s}",
    ]


def _metrics_http(settings: ProxySettings) -> str:
    """The http-level lines of the tenant metrics (the counters, the script, their listener) and
    of the tenant queue, which needs the same module."""
    metrics = settings.metrics
    if metrics is None:
        return "    # No tenant metrics (they need nginx's Lua module: libnginx-mod-http-lua)."
    queue = [f"    lua_shared_dict {TENANT_SLOTS_DICT};"] if _queued(settings) else []
    return "\n".join(
        [
            "    # Per-tenant counters for Prometheus, shared by the workers: the chunk below is",
            "    # resnet18_triton/deploy/tenant_metrics.lua; its value is `tenant_metrics`.",
            f"    lua_shared_dict {TENANT_METRICS_DICT};",
            *queue,
            "    init_by_lua_block {",
            f"        tenant_metrics = {_lua_chunk(TENANT_METRICS_SCRIPT)}",
            *_queue_init(settings),
            "    }",
            "",
            "    # GET /metrics: the tenant counters, and nothing else; no request goes upstream.",
            "    server {",
            f"        listen {metrics.listen};",
            "        access_log off;",
            "        location = /metrics {",
            "            content_by_lua_block {",
            "                tenant_metrics.collect()",
            "            }",
            "        }",
            "        location / {",
            "            return 404;",
            "        }",
            "    }",
        ]
    )


def _metrics_log(settings: ProxySettings) -> str:
    if settings.metrics is None:
        return "# no tenant metrics"
    release = "\n            tenant_queue.release()" if _queued(settings) else ""
    return f"log_by_lua_block {{\n            tenant_metrics.log(){release}\n        }}"


def _guard(settings: ProxySettings) -> str:
    """Lines at the top of every location that reaches Triton (not health): key, then limits."""
    lines = []
    if settings.auth is not None:
        lines.append('if ($api_key_name = "") {\n                return 401;\n            }')
    limits = settings.limits
    lines += [
        f"limit_req zone=per_client burst={limits.burst} nodelay;",
        f"limit_conn per_client_conn {limits.client_connections};",
        f"limit_conn in_flight {limits.max_in_flight};",
        f"limit_conn large_in_flight {limits.max_large_in_flight};",
    ]
    if settings.auth is not None:
        # With the queue, limit_conn counts a key's waiting requests too: its share may wait.
        waiting = 2 if _queued(settings) else 1
        lines += [
            f"limit_conn tenant_w{weight} {waiting * limits.tenant_in_flight(weight)};"
            for weight in WEIGHTS
        ]
        lines += [
            f"limit_conn large_w{weight} {limits.tenant_large_in_flight(weight)};"
            for weight in WEIGHTS
        ]
    if _queued(settings):
        lines += [
            'set $tenant_slot "";',
            "access_by_lua_block {\n                tenant_queue.admit()\n            }",
        ]
    return "\n            ".join(lines)


def render(settings: ProxySettings) -> str:
    """The nginx.conf text for ``settings`` (raises ``ProxyError`` without upstreams)."""
    if not settings.upstreams:
        raise ProxyError("the proxy needs at least one upstream replica")
    ssl = " ssl" if settings.tls is not None else ""
    guard = _guard(settings)  # the same checks in every inference location
    return _Template(TEMPLATE_PATH.read_text()).substitute(
        load_modules=_load_modules(settings),
        metrics_http=_metrics_http(settings),
        metrics_log=_metrics_log(settings),
        http_servers=_server_lines(settings.upstreams, grpc=False),
        grpc_servers=_server_lines(settings.upstreams, grpc=True),
        listen_http=settings.listen_http + ssl,
        listen_grpc=settings.listen_grpc + ssl,
        max_body_bytes=settings.body_limit,
        body_budget_bytes=settings.limits.body_budget_bytes,
        max_in_flight=settings.limits.max_in_flight,
        max_large_in_flight=settings.limits.max_large_in_flight,
        rate_per_s=settings.limits.rate_per_s,
        retry_after_s=settings.limits.retry_after_s,
        njs_http=_njs_http(settings),
        auth_http=_auth_http(settings.auth),
        large_http=_large_http(),
        tls_http=_tls_http(settings.tls),
        guard=guard,
        canary_http=_canary_http(settings.canaries),
        canary_locations=_canary_locations(settings.canaries, guard),
        runtime_dir=settings.runtime_dir,
        error_log=settings.error_log,
        access_log=settings.access_log
        if settings.access_log == "off"
        else (f"{settings.access_log} edge"),
        worker_processes=settings.worker_processes,
        user=f"user {settings.user};" if settings.user else "# no user: workers run as nginx does",
        # Every replica once: a request fails only when all of them failed it.
        next_upstream_tries=len(settings.upstreams),
    )


def script_text() -> str:
    """The njs script ``Auth.script`` and ``CanaryRouting.script`` point at (the same for every
    deployment)."""
    return NJS_SCRIPT.read_text()


# docker-compose runs its replicas with host networking: replica N serves HTTP on N*100 + 8000 and
# gRPC on the next port, all on 127.0.0.1 (docker-compose.yml names the same ports).
COMPOSE_REPLICA_BASE_PORT = contract.DEFAULT_HTTP_PORT
COMPOSE_REPLICA_PORT_STEP = 100


# docker-compose's default service: its one server on these ports, the edge in front of it on
# Triton's standard ones (8000, 8001), its tenant metrics beside Triton's metrics port (8002).
COMPOSE_SERVER_UPSTREAM = Upstream(
    "127.0.0.1",
    http_port=contract.DEFAULT_HTTP_PORT + 10,
    grpc_port=contract.DEFAULT_GRPC_PORT + 10,
)
COMPOSE_EDGE_METRICS = f"127.0.0.1:{contract.DEFAULT_METRICS_PORT + 1}"


def compose_edge_settings() -> ProxySettings:
    """The configuration of compose's default ``edge``: the same proxy in front of the one
    ``triton`` server, on the host's loopback (host networking) at Triton's standard ports.
    Loopback only, so no key and no TLS; the limits and the body budget are what bound the
    server's memory when a local caller floods it."""
    return ProxySettings(
        upstreams=(COMPOSE_SERVER_UPSTREAM,),
        listen_http=f"127.0.0.1:{contract.DEFAULT_HTTP_PORT}",
        listen_grpc=f"127.0.0.1:{contract.DEFAULT_GRPC_PORT}",
        metrics=TenantMetrics(COMPOSE_EDGE_METRICS),
        runtime_dir="/tmp",
        error_log="/dev/stderr",
        access_log="/dev/stdout",
        canaries=COMPOSE_CANARIES,
    )


def compose_replica_upstream(index: int) -> Upstream:
    """Replica ``index`` (1-based) of docker-compose's ``replicas`` profile."""
    http_port = COMPOSE_REPLICA_BASE_PORT + index * COMPOSE_REPLICA_PORT_STEP
    return Upstream("127.0.0.1", http_port=http_port, grpc_port=http_port + 1)


# Where the container proxies find their njs script, key hashes and certificate. compose mounts
# the folder PROXY_SECRETS_DIR (./secrets/proxy) at /run/secrets; Kubernetes mounts a ConfigMap
# and two Secrets.
CONTAINER_CONFIG_DIR = "/etc/nginx/resnet18"
COMPOSE_SECRETS_DIR = "/run/secrets"
COMPOSE_KEY_HASHES_SECRET = "api-key-hashes.map"
COMPOSE_TLS_CERTIFICATE_SECRET = "tls.crt"
COMPOSE_TLS_KEY_SECRET = "tls.key"
KUBERNETES_KEY_HASHES_DIR = "/etc/nginx/resnet18-api-keys"
KUBERNETES_KEY_HASHES_FILE = "api-key-hashes.map"
KUBERNETES_TLS_DIR = "/etc/nginx/resnet18-tls"
# compose mounts the model repository into its proxies read-only, where the servers see it: the
# njs script reads each canary's share there. (Kubernetes pods copy the repository from an
# image, so a new version there is a rollout, or KServe's canary: docs/deployment.md.)
COMPOSE_CANARIES = CanaryRouting(
    repository="/models", script=f"{CONTAINER_CONFIG_DIR}/{NJS_SCRIPT_NAME}"
)


def compose_settings(replicas: int) -> ProxySettings:
    """The configuration docker-compose mounts: replicas ``triton-1`` .. ``triton-N`` on the
    host's loopback (host networking), the proxy on 127.0.0.1:8080 (HTTPS) and :8081 (gRPC over
    TLS), its tenant metrics on :8082, API-key hashes and the certificate from the mounted
    secrets folder."""
    return ProxySettings(
        upstreams=tuple(compose_replica_upstream(index) for index in range(1, replicas + 1)),
        listen_http="127.0.0.1:8080",
        listen_grpc="127.0.0.1:8081",
        metrics=TenantMetrics(f"127.0.0.1:{METRICS_PORT}"),
        runtime_dir="/tmp",
        error_log="/dev/stderr",
        access_log="/dev/stdout",
        auth=Auth(
            key_map=f"{COMPOSE_SECRETS_DIR}/{COMPOSE_KEY_HASHES_SECRET}",
            script=f"{CONTAINER_CONFIG_DIR}/{NJS_SCRIPT_NAME}",
        ),
        tls=Tls(
            certificate=f"{COMPOSE_SECRETS_DIR}/{COMPOSE_TLS_CERTIFICATE_SECRET}",
            key=f"{COMPOSE_SECRETS_DIR}/{COMPOSE_TLS_KEY_SECRET}",
        ),
        canaries=COMPOSE_CANARIES,
    )


def kubernetes_settings(service: str = "triton") -> ProxySettings:
    """The configuration of the proxy Deployment in deploy/kubernetes.

    Upstream is the replicas' Service, listed twice: kube-proxy balances connections over the
    ready pods, and the second entry lets nginx resend a failed request on a new connection
    (which may land on another pod) instead of failing it. Key hashes and the certificate come
    from the Secrets ``triton-proxy-api-keys`` and ``triton-proxy-tls`` (a kubernetes.io/tls
    Secret: ``tls.crt``, ``tls.key``).
    """
    return ProxySettings(
        upstreams=(Upstream(service), Upstream(service)),
        listen_http="8080",
        listen_grpc="8081",
        metrics=TenantMetrics(str(METRICS_PORT)),
        runtime_dir="/tmp",
        error_log="stderr",
        access_log="/dev/stdout",
        auth=Auth(
            key_map=f"{KUBERNETES_KEY_HASHES_DIR}/{KUBERNETES_KEY_HASHES_FILE}",
            script=f"{CONTAINER_CONFIG_DIR}/{NJS_SCRIPT_NAME}",
        ),
        tls=Tls(
            certificate=f"{KUBERNETES_TLS_DIR}/tls.crt",
            key=f"{KUBERNETES_TLS_DIR}/tls.key",
        ),
    )


def nginx_binary() -> str:
    """Path of the distribution's nginx (``ProxyError`` with the install hint when absent)."""
    for candidate in ("nginx", "/usr/sbin/nginx"):
        found = shutil.which(candidate)
        if found:
            return found
    raise ProxyError("nginx is not installed: apt-get install nginx (Debian/Ubuntu)")


def prepare_runtime_dir(runtime_dir: Path) -> None:
    """Create the directories the rendered config writes to (nginx does not create parents)."""
    for name in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"):
        (runtime_dir / name).mkdir(parents=True, exist_ok=True)


def check_config(config_path: Path, runtime_dir: Path) -> None:
    """``nginx -t`` on a rendered file; ``ProxyError`` with nginx's own message when invalid."""
    result = subprocess.run(
        [
            nginx_binary(),
            "-t",
            "-q",
            "-e",
            "stderr",
            "-p",
            str(runtime_dir),
            "-c",
            str(config_path),
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    if result.returncode != 0:
        raise ProxyError(f"nginx rejected {config_path}: {result.stderr.strip()}")


def start_nginx(config_path: Path, runtime_dir: Path, log_path: Path) -> subprocess.Popen[bytes]:
    """Start nginx in the foreground (``daemon off`` is in the config) as the current user."""
    log = log_path.open("ab")
    try:
        return subprocess.Popen(
            [nginx_binary(), "-e", "stderr", "-p", str(runtime_dir), "-c", str(config_path)],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    finally:
        log.close()
