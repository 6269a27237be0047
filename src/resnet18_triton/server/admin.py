"""A running tritonserver's model-repository API, called with its admin key.

Used by ``serve``'s watchdog (reload a model whose stub died) and by ``publish`` and ``rollback``
(load the version just installed on every server of the repository). Standard library only: it
runs where the server runs and where the repository is written.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from dataclasses import dataclass

from resnet18_triton.contract import ADMIN_KEY_HEADER
from resnet18_triton.errors import AdminKeyError, ServerUnavailableError

# A load compiles and warms a model: seconds on 2 cores, more for large models.
LOAD_TIMEOUT_S = 300.0
# Unloading an ensemble's step must not unload the ensemble with it.
KEEP_DEPENDENTS = b'{"parameters":{"unload_dependents":false}}'


@dataclass(frozen=True)
class AdminEndpoint:
    """One server: ``url`` is ``host:port`` (or ``http://host:port``) of its HTTP endpoint,
    ``key`` the admin key it was started with (None: ask without one)."""

    url: str
    key: str | None = None
    timeout_s: float = LOAD_TIMEOUT_S

    @property
    def base(self) -> str:
        return self.url if "://" in self.url else f"http://{self.url}"

    def post(self, path: str, body: bytes = b"") -> tuple[int, str]:
        """POST ``path``: (HTTP status, the body or the error's first 300 characters); status 0
        when nothing answered."""
        headers = {"Content-Type": "application/json"}
        if self.key:
            headers[ADMIN_KEY_HEADER] = self.key
        request = urllib.request.Request(
            self.base + path, data=body, method="POST", headers=headers
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as reply:
                return reply.status, reply.read().decode(errors="replace")
        except urllib.error.HTTPError as error:
            return error.code, error.read().decode(errors="replace")[:300]
        except OSError as error:
            return 0, str(error)

    def answers(self) -> bool:
        """True when a server answers live at ``url``; raises AdminKeyError when it refuses the
        key (checked on the repository index, which changes nothing)."""
        status, text = self.post("/v2/repository/index")
        if status == 0:
            return False
        if status in (401, 403):
            raise AdminKeyError(
                f"the server at {self.url} refused the admin key ({text.strip()}): give the key "
                "it was started with (--admin-key-file, or $RESNET18_TRITON_ADMIN_KEY_FILE)"
            )
        return True

    def load(self, model: str) -> None:
        """Load (or reload) ``model`` as its files are now; ServerUnavailableError when the server
        cannot, with its reason."""
        status, text = self.post(f"/v2/repository/models/{model}/load")
        if status != 200:
            raise ServerUnavailableError(
                f"the server at {self.url} could not load {model!r} "
                f"({status or 'no answer'}: {text.strip()})"
            )

    def unload(self, model: str) -> None:
        """Unload ``model`` (Triton lets its in-flight requests finish first);
        ServerUnavailableError when the server refuses."""
        status, text = self.post(f"/v2/repository/models/{model}/unload")
        if status != 200:
            raise ServerUnavailableError(
                f"the server at {self.url} could not unload {model!r} "
                f"({status or 'no answer'}: {text.strip()})"
            )

    def reload(self, model: str) -> tuple[bool, str]:
        """Unload ``model`` (keeping the ensembles using it), then load it: (ok, why not)."""
        for action, body in (("unload", KEEP_DEPENDENTS), ("load", b"")):
            status, text = self.post(f"/v2/repository/models/{model}/{action}", body)
            if status != 200:
                return False, f"{action} answered {status}: {text}"
        return True, ""

    def versions(self, model: str) -> tuple[int, ...]:
        """The versions of ``model`` the server has ready, oldest first (from the repository
        index); () when none, or when nothing answers."""
        status, text = self.post("/v2/repository/index", b"{}")
        try:
            index = json.loads(text) if status == 200 else []
        except ValueError:
            return ()
        return tuple(
            sorted(
                int(entry["version"])
                for entry in index
                if entry.get("name") == model
                and entry.get("state") == "READY"
                and str(entry.get("version", "")).isdigit()
            )
        )
