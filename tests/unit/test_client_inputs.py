"""Expansion of command-line arguments into image paths, and reading them for sending."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from resnet18_triton.client.inputs import NoImagesError, expand_inputs, read_image_bytes
from resnet18_triton.errors import ImageError


def touch(directory: Path, *names: str) -> list[Path]:
    paths = []
    for name in names:
        path = directory / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"image bytes")
        paths.append(path)
    return paths


def test_files_keep_the_given_order(tmp_path: Path) -> None:
    b, a = touch(tmp_path, "b.jpg", "a.jpg")
    assert expand_inputs([str(b), str(a)]) == [b, a]


def test_explicit_files_are_kept_whatever_their_extension(tmp_path: Path) -> None:
    (notes,) = touch(tmp_path, "scan.data")
    assert expand_inputs([str(notes)]) == [notes]


def test_a_missing_file_is_kept_for_a_per_image_error(tmp_path: Path) -> None:
    missing = tmp_path / "missing.jpg"
    assert expand_inputs([str(missing)]) == [missing]


def test_directory_picks_images_by_extension_case_insensitively(tmp_path: Path) -> None:
    touch(tmp_path, "b.JPG", "a.png", "c.Tiff", "d.webp", "notes.txt", "e.jpeg.bak", ".hidden.jpg")
    names = [path.name for path in expand_inputs([str(tmp_path)])]
    assert names == ["a.png", "b.JPG", "c.Tiff", "d.webp"]


@pytest.mark.parametrize("extension", ["jpg", "jpeg", "png", "bmp", "gif", "webp", "tif", "tiff"])
def test_every_documented_extension_is_picked(tmp_path: Path, extension: str) -> None:
    touch(tmp_path, f"x.{extension.upper()}")
    assert len(expand_inputs([str(tmp_path)])) == 1


def test_directories_are_not_recursive_by_default(tmp_path: Path) -> None:
    touch(tmp_path, "top.jpg", "sub/deep.jpg", ".git/hidden.jpg")
    assert [path.name for path in expand_inputs([str(tmp_path)])] == ["top.jpg"]


def test_recursive_descends_but_skips_hidden_directories(tmp_path: Path) -> None:
    touch(tmp_path, "top.jpg", "sub/deep.jpg", "sub/deeper/deepest.png", ".git/hidden.jpg")
    names = {path.name for path in expand_inputs([str(tmp_path)], recursive=True)}
    assert names == {"top.jpg", "deep.jpg", "deepest.png"}


def test_a_directory_without_images_is_an_error_naming_it(tmp_path: Path) -> None:
    touch(tmp_path, "readme.txt")
    with pytest.raises(NoImagesError, match=str(tmp_path)):
        expand_inputs([str(tmp_path)])


def test_glob_is_expanded_sorted(tmp_path: Path) -> None:
    touch(tmp_path, "b1.jpg", "a2.jpg", "c.png")
    names = [path.name for path in expand_inputs([str(tmp_path / "*.jpg")])]
    assert names == ["a2.jpg", "b1.jpg"]


@pytest.mark.parametrize("pattern", ["img?.png", "img[12].png"])
def test_question_mark_and_brackets_are_patterns(tmp_path: Path, pattern: str) -> None:
    touch(tmp_path, "img1.png", "img2.png", "img10.png")
    names = [path.name for path in expand_inputs([str(tmp_path / pattern)])]
    assert names == ["img1.png", "img2.png"]


def test_double_star_spans_directories(tmp_path: Path) -> None:
    touch(tmp_path, "a/x.jpg", "a/b/y.jpg")
    names = {path.name for path in expand_inputs([str(tmp_path / "**" / "*.jpg")])}
    assert names == {"x.jpg", "y.jpg"}


def test_a_glob_matching_a_directory_expands_it(tmp_path: Path) -> None:
    touch(tmp_path, "album1/a.jpg", "album1/notes.txt", "album2/b.png")
    names = [path.name for path in expand_inputs([str(tmp_path / "album*")])]
    assert names == ["a.jpg", "b.png"]


def test_a_glob_matching_nothing_is_an_error_naming_it(tmp_path: Path) -> None:
    pattern = str(tmp_path / "*.jpg")
    with pytest.raises(NoImagesError, match="no file matches the pattern") as error:
        expand_inputs([pattern])
    assert pattern in str(error.value)


def test_an_existing_file_with_glob_characters_is_taken_literally(tmp_path: Path) -> None:
    literal, _ = touch(tmp_path, "photo[1].jpg", "photo1.jpg")
    assert expand_inputs([str(literal)]) == [literal]


def test_duplicates_are_removed_keeping_the_first_spelling(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, b = touch(tmp_path, "a.jpg", "b.jpg")
    monkeypatch.chdir(tmp_path)
    result = expand_inputs(["./a.jpg", str(tmp_path), "*.jpg", str(b), "a.jpg"])
    assert result == [Path("a.jpg"), b]


def test_duplicates_through_a_symlink_are_removed(tmp_path: Path) -> None:
    (real,) = touch(tmp_path, "real.jpg")
    link = tmp_path / "link.jpg"
    link.symlink_to(real)
    assert expand_inputs([str(real), str(link)]) == [real]


def test_home_is_expanded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    touch(tmp_path, "pics/a.jpg")
    assert expand_inputs(["~/pics/*.jpg"]) == [tmp_path / "pics" / "a.jpg"]


# --- reading ---------------------------------------------------------------------------------


def test_read_image_bytes_returns_the_file_content(tmp_path: Path) -> None:
    path = tmp_path / "x.jpg"
    path.write_bytes(b"\xff\xd8 jpeg")
    assert read_image_bytes(path) == b"\xff\xd8 jpeg"


@pytest.mark.parametrize(
    ("name", "reason"),
    [("missing.jpg", "no such file"), ("", "is a directory"), ("empty.jpg", "file is empty")],
)
def test_unreadable_files_raise_image_error_with_a_short_reason(
    tmp_path: Path, name: str, reason: str
) -> None:
    (tmp_path / "empty.jpg").write_bytes(b"")
    with pytest.raises(ImageError, match=f"^{reason}$"):
        read_image_bytes(tmp_path / name)


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their permissions")
def test_permission_denied_is_an_image_error(tmp_path: Path) -> None:
    path = tmp_path / "secret.jpg"
    path.write_bytes(b"x")
    path.chmod(0)
    with pytest.raises(ImageError, match="permission denied"):
        read_image_bytes(path)
