"""The gate a new version passes before it is published, and the held-out images it reads."""

from __future__ import annotations

from pathlib import Path

from resnet18_triton.export.publish import GateReport, held_out_images


def test_with_labels_the_gate_refuses_only_a_drop_in_accuracy_beyond_the_bar() -> None:
    better = GateReport(1, 2, 100, agreement=0.5, served_accuracy=0.90, candidate_accuracy=0.95)
    assert better.refusal(0.9, 0.01) is None  # low agreement is fine when accuracy rose
    worse = GateReport(1, 2, 100, agreement=0.99, served_accuracy=0.90, candidate_accuracy=0.88)
    refusal = worse.refusal(0.9, 0.01)
    assert refusal is not None and "88.00%" in refusal and "90.00%" in refusal
    assert worse.refusal(0.9, 0.05) is None


def test_without_labels_the_gate_judges_by_agreement_and_says_how_to_judge_by_accuracy() -> None:
    report = GateReport(3, 4, 20, agreement=0.85)
    refusal = report.refusal(0.9, 0.01)
    assert refusal is not None and "a folder per label" in refusal
    assert report.refusal(0.8, 0.01) is None
    assert "| top-1 agreement v4 / v3 | 85.00% |" in report.table()


def _png(path: Path) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (4, 4)).save(path)


def test_held_out_images_in_a_folder_per_label_are_labelled_by_its_index(tmp_path) -> None:
    _png(tmp_path / "cat" / "a.png")
    _png(tmp_path / "dog" / "b.png")
    _png(tmp_path / "dog" / "c.png")
    _png(tmp_path / "not-a-label" / "d.png")
    held = held_out_images(tmp_path, ["dog", "cat"])
    assert [p.name for p in held.files] == ["a.png", "b.png", "c.png"]
    assert held.labels == (1, 0, 0)


def test_held_out_images_directly_in_the_folder_have_no_labels(tmp_path) -> None:
    _png(tmp_path / "a.png")
    held = held_out_images(tmp_path, ["dog"])
    assert [p.name for p in held.files] == ["a.png"] and held.labels is None
