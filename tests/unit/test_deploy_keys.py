"""API key files for the proxy: parsing, hashing, the nginx map, and the key-file CLI helpers."""

from __future__ import annotations

import hashlib
import os
import stat
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from resnet18_triton.cli import cli
from resnet18_triton.deploy import keys, proxy
from resnet18_triton.errors import ProxyError
from tests.edge_support import write_key_file
from tests.support import run_cli

GOOD = "0123456789abcdef0123456789abcdef"
OTHER = "fedcba9876543210fedcba9876543210"


def test_a_line_is_a_key_or_a_name_and_a_key_and_comments_are_skipped() -> None:
    parsed = keys.parse_api_keys(f"# team keys\n\nalice:{GOOD}\n  {OTHER}  \n")
    assert [key.name for key in parsed] == [
        "alice",
        f"key-{hashlib.sha256(OTHER.encode()).hexdigest()[:8]}",
    ]
    assert [key.key for key in parsed] == [GOOD, OTHER]


def test_the_hash_is_the_sha256_hex_the_njs_script_computes() -> None:
    assert keys.key_hash(GOOD) == hashlib.sha256(GOOD.encode()).hexdigest()
    script = proxy.script_text()
    assert "createHash('sha256')" in script and ".digest('hex')" in script


def test_the_map_holds_hashes_and_names_and_never_a_key() -> None:
    text = keys.hash_map(keys.parse_api_keys(f"alice:{GOOD}\nbob:{OTHER}\n"))
    assert f'"{keys.key_hash(GOOD)}" "alice:1";' in text
    assert f'"{keys.key_hash(OTHER)}" "bob:1";' in text
    assert GOOD not in text and OTHER not in text


def test_an_empty_file_revokes_every_key() -> None:
    assert keys.parse_api_keys("# nobody\n") == []


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("short", "fewer than 16"),
        ("has space in the middle of it", "letters, digits"),
        ('quote"inside0123456789', "letters, digits"),
        (f"bad name:{GOOD}", "the name before ':'"),
        (f"a:{GOOD}\na:{OTHER}", "appear more than once"),
        (f"a:{GOOD}\nb:{GOOD}", "same key appears on two lines"),
    ],
)
def test_a_bad_line_is_refused_by_its_number_without_quoting_the_key(
    text: str, message: str
) -> None:
    with pytest.raises(ProxyError, match=message) as refused:
        keys.parse_api_keys(text, "keys.txt")
    assert "keys.txt" in str(refused.value)
    assert GOOD not in str(refused.value) and OTHER not in str(refused.value)


def test_a_key_file_readable_by_others_is_refused_with_the_chmod_to_run(tmp_path: Path) -> None:
    path = write_key_file(tmp_path / "keys.txt", [GOOD])
    path.chmod(0o644)
    with pytest.raises(ProxyError, match=f"chmod 600 {path}"):
        keys.read_api_keys(path)


def test_the_repr_of_a_key_shows_its_name_only() -> None:
    assert GOOD not in repr(keys.ApiKey("alice", GOOD))


def test_add_api_key_appends_a_random_key_to_a_private_file(tmp_path: Path) -> None:
    path = tmp_path / "keys.txt"
    first = keys.add_api_key(path, "alice")
    second = keys.add_api_key(path, "bob")
    assert first != second and len(first) == 2 * keys.GENERATED_KEY_BYTES
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [(k.name, k.key) for k in keys.read_api_keys(path)] == [
        ("alice", first),
        ("bob", second),
    ]
    with pytest.raises(ProxyError, match="more than once"):
        keys.add_api_key(path, "alice")


def _cluster_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return run_cli("cluster", *args, timeout_s=60, env={**os.environ, "NO_COLOR": "1"})


def test_the_cli_adds_a_key_prints_it_once_and_hashes_the_file(tmp_path: Path) -> None:
    path = tmp_path / "keys.txt"
    added = _cluster_cli("keys", "add", "alice", "--api-key-file", str(path))
    assert added.returncode == 0, added.stderr
    key = added.stdout.strip()
    assert keys.read_api_keys(path)[0].key == key
    hashed = _cluster_cli("keys", "hash", "--api-key-file", str(path))
    assert hashed.returncode == 0, hashed.stderr
    assert f'"{keys.key_hash(key)}" "alice:1";' in hashed.stdout
    assert key not in hashed.stdout + hashed.stderr


def test_the_key_helpers_need_a_key_file() -> None:
    result = _cluster_cli("--hash-api-keys")
    assert result.returncode == 2 and "--api-key-file" in result.stderr


def _keys_cli(*args: str) -> Result:
    return CliRunner().invoke(cli, ["cluster", *args])


@pytest.mark.parametrize(
    "before",
    [
        ("keys", "add", "alice", "--api-key-file", "{file}"),
        ("--api-key-file", "{file}", "keys", "add", "alice"),
    ],
    ids=["file-after-add", "file-given-to-cluster"],
)
def test_cluster_keys_add_appends_a_key_and_prints_only_the_key(
    tmp_path: Path, before: tuple[str, ...]
) -> None:
    path = tmp_path / "keys.txt"
    result = _keys_cli(*(arg.format(file=path) for arg in before))
    assert result.exit_code == 0, result.output
    [only] = keys.read_api_keys(path)
    assert (only.name, result.stdout) == ("alice", f"{only.key}\n")
    assert "deprecated" not in result.stderr
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_cluster_keys_hash_prints_the_map_of_the_key_file(tmp_path: Path) -> None:
    path = write_key_file(tmp_path / "keys.txt", [f"alice:{GOOD}"])
    result = _keys_cli("keys", "hash", "--api-key-file", str(path))
    assert result.exit_code == 0, result.output
    assert f'"{keys.key_hash(GOOD)}" "alice:1";' in result.stdout
    assert GOOD not in result.output and result.stderr == ""


@pytest.mark.parametrize("command", ["add", "hash"])
def test_cluster_keys_without_a_key_file_is_a_usage_error_naming_the_option(command: str) -> None:
    result = _keys_cli("keys", command, *(["alice"] if command == "add" else []))
    assert result.exit_code == 2
    assert f"`cluster keys {command}` needs --api-key-file FILE" in result.stderr


def test_the_old_add_api_key_still_adds_and_warns_naming_cluster_keys_add(tmp_path: Path) -> None:
    path = tmp_path / "keys.txt"
    result = _keys_cli("--api-key-file", str(path), "--add-api-key", "alice")
    assert result.exit_code == 0, result.output
    assert result.stdout == f"{keys.read_api_keys(path)[0].key}\n"
    assert "--add-api-key is deprecated" in result.stderr
    assert "use `resnet18-triton cluster keys add NAME --api-key-file FILE`" in result.stderr


def test_the_old_hash_api_keys_still_hashes_and_warns_naming_cluster_keys_hash(
    tmp_path: Path,
) -> None:
    path = write_key_file(tmp_path / "keys.txt", [f"alice:{GOOD}"])
    result = _keys_cli("--api-key-file", str(path), "--hash-api-keys")
    assert result.exit_code == 0, result.output
    assert f'"{keys.key_hash(GOOD)}" "alice:1";' in result.stdout
    assert "--hash-api-keys is deprecated" in result.stderr
    assert "use `resnet18-triton cluster keys hash --api-key-file FILE`" in result.stderr


def test_cluster_help_lists_keys_and_hides_the_old_flags() -> None:
    result = _keys_cli("--help")
    assert result.exit_code == 0
    assert "keys  Make and hash the API keys" in result.stdout
    assert "--add-api-key" not in result.stdout and "--hash-api-keys" not in result.stdout


def test_a_key_line_may_end_with_its_tenants_weight_and_a_bad_weight_is_named() -> None:
    parsed = keys.parse_api_keys(f"alice:{GOOD}:3\nbob:{OTHER}\n")
    assert [(key.name, key.weight) for key in parsed] == [("alice", 3), ("bob", 1)]
    assert f'"{keys.key_hash(GOOD)}" "alice:3";' in keys.hash_map(parsed)
    with pytest.raises(ProxyError, match=r"line 1: the weight after the key must be one of 1, 2"):
        keys.parse_api_keys(f"alice:{GOOD}:9\n")
    with pytest.raises(ProxyError, match="line 1") as refused:
        keys.parse_api_keys(f"alice:{GOOD}:heavy\n")
    assert GOOD not in str(refused.value)
