"""Write the deployment files generated from code: ``python -m resnet18_triton.deploy.render``.

They are committed (docker-compose and kustomize read them as files) and a unit test fails when
one differs from what this module renders, so edit the template or the code, then re-run this.
"""

from __future__ import annotations

import sys
from pathlib import Path

from resnet18_triton.deploy import proxy

COMPOSE_REPLICAS = 2
COMPOSE_PROXY_CONFIG = Path("deploy/proxy/nginx.compose.conf")
COMPOSE_EDGE_CONFIG = Path("deploy/proxy/nginx.edge.conf")
KUBERNETES_PROXY_CONFIG = Path("deploy/kubernetes/proxy/nginx.conf")
# The njs script that hashes bearer tokens, mounted beside each config.
COMPOSE_PROXY_SCRIPT = Path("deploy/proxy") / proxy.NJS_SCRIPT_NAME
KUBERNETES_PROXY_SCRIPT = Path("deploy/kubernetes/proxy") / proxy.NJS_SCRIPT_NAME


def rendered_files() -> dict[Path, bytes]:
    """Relative path -> content of every generated deployment file."""
    return {
        COMPOSE_PROXY_CONFIG: proxy.render(proxy.compose_settings(COMPOSE_REPLICAS)).encode(),
        COMPOSE_EDGE_CONFIG: proxy.render(proxy.compose_edge_settings()).encode(),
        KUBERNETES_PROXY_CONFIG: proxy.render(proxy.kubernetes_settings()).encode(),
        COMPOSE_PROXY_SCRIPT: proxy.script_text().encode(),
        KUBERNETES_PROXY_SCRIPT: proxy.script_text().encode(),
    }


def write_all(root: Path) -> list[Path]:
    """Write every generated file under the project ``root``; returns the paths written."""
    written = []
    for relative, content in rendered_files().items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
        written.append(path)
    return written


if __name__ == "__main__":
    for written_path in write_all(Path(sys.argv[1] if len(sys.argv) > 1 else ".")):
        print(written_path)
