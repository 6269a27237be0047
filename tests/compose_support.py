"""Reading docker-compose files and Dockerfiles in tests: `docker-compose config` renders a file
offline (no Docker engine needed), and these helpers read both docker-compose 1.29's short forms
and Compose v2's long forms."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import yaml

from tests.support import missing

REPO_ROOT = Path(__file__).resolve().parents[1]
COMPOSE_BINARY = "docker-compose"


def compose_binary() -> str:
    path = shutil.which(COMPOSE_BINARY)
    if path is None:
        missing(
            f"`{COMPOSE_BINARY}` not found; install it with `apt-get install docker-compose` "
            "(Debian's docker-compose 1.29 needs no Docker engine for `config`)"
        )
    return path


def clean_env() -> dict[str, str]:
    """The caller's environment without the variables the compose file reads."""
    return {k: v for k, v in os.environ.items() if not k.startswith(("TRITON_", "COMPOSE_"))}


def render(compose_file: Path, tmp_path: Path, **variables: str) -> dict:
    """`docker-compose config` output as a dict, with defaults unless variables are given."""
    binary = compose_binary()
    # An empty env file, so that a developer's .env does not change the rendered defaults.
    env_file = tmp_path / "empty.env"
    env_file.write_text("")
    env = clean_env()
    env.update(variables)
    result = subprocess.run(
        [binary, "--env-file", str(env_file), "-f", str(compose_file), "config"],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    rendered = yaml.safe_load(result.stdout)
    assert isinstance(rendered, dict) and "services" in rendered, result.stdout
    return rendered


# --- parsing helpers: accept both docker-compose 1.29 (short strings) and Compose v2 (long form)


def port_bindings(service: dict) -> list[tuple[str, str, str]]:
    """(host_ip, published, target) for each published port; host_ip is '' when unbound."""
    bindings = []
    for port in service.get("ports", []):
        if isinstance(port, dict):
            bindings.append(
                (str(port.get("host_ip", "")), str(port.get("published", "")), str(port["target"]))
            )
            continue
        spec = str(port).split("/", 1)[0]
        parts = spec.rsplit(":", 2)
        if len(parts) == 3:
            bindings.append((parts[0], parts[1], parts[2]))
        elif len(parts) == 2:
            bindings.append(("", parts[0], parts[1]))
        else:
            bindings.append(("", "", parts[0]))
    return bindings


def volumes(service: dict) -> list[tuple[str, str, bool]]:
    """(source, target, read_only) for each volume."""
    volumes = []
    for volume in service.get("volumes", []):
        if isinstance(volume, dict):
            volumes.append(
                (str(volume.get("source", "")), volume["target"], bool(volume.get("read_only")))
            )
            continue
        parts = str(volume).split(":")
        options = parts[2].split(",") if len(parts) > 2 else []
        volumes.append((parts[0], parts[1] if len(parts) > 1 else parts[0], "ro" in options))
    return volumes


def service_command(service: dict) -> list[str]:
    command = service.get("command", [])
    if isinstance(command, str):
        command = command.split()
    return [str(token) for token in command]


def command_options(command: list[str]) -> list[tuple[str, str]]:
    """(--flag, value) pairs from `--flag=value` and `--flag value` tokens."""
    options = []
    for index, token in enumerate(command):
        if not token.startswith("--"):
            continue
        name, equals, value = token.partition("=")
        if not equals and index + 1 < len(command) and not command[index + 1].startswith("-"):
            value = command[index + 1]
        options.append((name, value))
    return options


def size_bytes(value: object) -> int:
    if isinstance(value, int):
        return value
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]?)i?b?\s*", str(value).lower())
    assert match, f"cannot parse size {value!r}"
    number, unit = match.groups()
    return int(float(number) * 1024 ** " kmgt".index(unit or " "))


def cpu_limit(service: dict) -> float | None:
    value = service.get("cpus")
    if value is None:
        value = service.get("deploy", {}).get("resources", {}).get("limits", {}).get("cpus")
    return None if value is None else float(value)


def dockerfile_instructions(dockerfile: Path) -> list[tuple[str, str]]:
    text = dockerfile.read_text()
    # Join continuation lines, drop comments and blank lines.
    text = re.sub(r"\\\s*\n", " ", text)
    instructions = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        keyword, _, rest = line.partition(" ")
        instructions.append((keyword.upper(), rest.strip()))
    return instructions
