"""The upload page in a real headless Chromium (Debian's package, driven by Playwright).

Set ``RESNET18_TRITON_UI_SCREENSHOT=docs/images/ui.png`` to also write the page with results,
as shown in the README (palette PNG, at most 200 KB).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support import SAMPLE_FILES
from tests.ui_support import classify_json

playwright_api = pytest.importorskip("playwright.sync_api")

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
VIEWPORT = {"width": 900, "height": 700}
SCREENSHOT_ENV_VAR = "RESNET18_TRITON_UI_SCREENSHOT"
SCREENSHOT_MAX_BYTES = 200 * 1024
NOT_AN_IMAGE = b"these are notes, not a photo\n" * 20
TOP_K = 5
MEGABYTE = 1024 * 1024


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not os.path.exists(CHROMIUM):
        pytest.fail(f"{CHROMIUM} is missing: scripts/setup.sh installs Debian's chromium")
    with playwright_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture()
def page(browser: Any, ui_url: str) -> Iterator[Any]:
    page = browser.new_page(viewport=VIEWPORT)
    page.goto(ui_url)
    playwright_api.expect(page.locator("#status")).to_contain_text("per image")
    yield page
    page.close()


def drop_file(page: Any, name: str, data: bytes) -> None:
    """Drop a file on the drop zone as a person dragging it from their desktop would."""
    transfer = page.evaluate_handle(
        """([name, bytes]) => {
            const transfer = new DataTransfer();
            transfer.items.add(new File([new Uint8Array(bytes)], name, {type: "image/jpeg"}));
            return transfer;
        }""",
        [name, list(data)],
    )
    page.dispatch_event("#drop", "drop", {"dataTransfer": transfer})


def rendered_card(card: Any) -> dict[str, Any]:
    """What the page shows for one file: the error, or each row's label, index, probability
    (the exact value behind the bar) and the percentage as displayed."""
    name = card.get_attribute("data-name")
    if card.locator(".error").count():
        return {"image": name, "error": card.locator(".error").inner_text()}
    rows = [
        {
            "label": row.locator(".label").inner_text(),
            "index": int(row.get_attribute("data-index")),
            "probability": float(row.get_attribute("data-probability")),
            "shown": row.locator(".probability").inner_text(),
        }
        for row in card.locator(".row").all()
    ]
    return {"image": name, "top": rows, "meta": card.locator(".meta").inner_text()}


def test_the_page_shows_for_each_photo_what_classify_json_prints_and_the_bad_files_error(
    page: Any, url: str, tmp_path: Path
) -> None:
    photos = [Path(shutil.copy(path, tmp_path)) for path in SAMPLE_FILES]
    bad = tmp_path / "notes.jpg"
    bad.write_bytes(NOT_AN_IMAGE)
    expected = classify_json(url, [*photos, bad], "--top-k", str(TOP_K))

    page.set_input_files("#files", [str(path) for path in photos])
    drop_file(page, bad.name, NOT_AN_IMAGE)
    answered = page.locator(".card .row, .card .error")
    playwright_api.expect(answered).to_have_count(len(photos) * TOP_K + 1, timeout=120_000)

    shown = [rendered_card(card) for card in page.locator(".card").all()]
    assert [card["image"] for card in shown] == [record["image"] for record in expected]
    for card, record in zip(shown[:-1], expected[:-1], strict=True):
        assert [{k: row[k] for k in ("label", "index", "probability")} for row in card["top"]] == (
            record["top"]
        )
        assert [row["shown"] for row in card["top"]] == [
            f"{entry['probability'] * 100:.3f}%" for entry in record["top"]
        ]
        assert card["meta"].startswith("resnet18 v1 · ")
    assert shown[-1] == {"image": "notes.jpg", "error": expected[-1]["error"]}
    assert expected[-1]["error"].startswith("cannot identify an image")
    _save_screenshot(page, tmp_path)


def test_a_file_over_the_limit_is_refused_in_the_page_without_uploading_it(page: Any) -> None:
    uploads: list[str] = []
    page.on(
        "request", lambda request: uploads.append(request.url) if request.method == "POST" else None
    )
    huge = {"name": "huge.jpg", "mimeType": "image/jpeg", "buffer": b"\xff" * (11 * MEGABYTE)}
    page.set_input_files("#files", [huge])
    error = page.locator('.card[data-name="huge.jpg"] .error')
    playwright_api.expect(error).to_have_text(
        "too large: 11.0 MB, the limit is 10.0 MB per image (not uploaded)"
    )
    assert uploads == []


def _save_screenshot(page: Any, tmp_path: Path) -> None:
    """The page as shown, quantised to a palette PNG small enough for the docs."""
    from PIL import Image

    raw = tmp_path / "ui-raw.png"
    page.screenshot(path=str(raw), full_page=True)
    target = Path(os.environ.get(SCREENSHOT_ENV_VAR) or tmp_path / "ui.png")
    with Image.open(raw) as image:
        image.convert("RGB").quantize(colors=128, dither=Image.Dither.NONE).save(
            target, optimize=True
        )
    assert target.stat().st_size <= SCREENSHOT_MAX_BYTES
