"""Text-layer markdown (tasks/text_layer.py) on PDFs that PyMuPDF writes here, each structure checked exactly,
and `--text-layer auto`'s per-page choice. These generated pages are the held-out set: the rules were tuned
on olmOCR-Bench's sample PDFs, never on these."""

from __future__ import annotations

import io
import json

import pytest

from kvl_tasks import documents as D
from kvl_tasks import ocr
from kvl_tasks.text_layer import page_markdown

from .helpers import ScriptedEngine

W, H = 612, 792
LEFT = ("The harvest of the northern orchards began in early September and ran well into the late autumn"
        " months.")
RIGHT = "Storage barns were filled to the roof with crates of apples and pears from every valley farm."


def _doc_page(draw):
    import pymupdf

    doc = pymupdf.open()
    page = doc.new_page(width=W, height=H)
    draw(page)
    return doc, page


def _text(page, x, y, s, size=10, font="helv"):
    page.insert_text((x, y), s, fontsize=size, fontname=font)


def _full_page(page):
    _text(page, 72, 30, "Orchard Quarterly - Volume 3", 8)  # running header
    _text(page, 72, 100, "Harvest Report", 20)
    # two columns of body text, each a few lines; the left one ends in a hyphenated word
    y = 140
    for ln in ["The harvest of the northern orchards", "began in early September and ran", "well into the late autu-",
               "mn months."]:
        _text(page, 72, y, ln)
        y += 13
    y = 140
    for ln in ["Storage barns were filled to the roof", "with crates of apples and pears from", "every valley farm."]:
        _text(page, 320, y, ln)
        y += 13
    # a ruled table, full width below the columns
    top, rows = 260, [["Fruit", "Tons", "Price"], ["Apples", "120", "3.10"], ["Pears", "45", "2.75"]]
    for r in range(len(rows) + 1):
        page.draw_line((72, top + r * 20), (540, top + r * 20))
    for c in range(4):
        page.draw_line((72 + c * 156, top), (72 + c * 156, top + 60))
    for r, row in enumerate(rows):
        for c, cell in enumerate(row):
            _text(page, 78 + c * 156, top + r * 20 + 14, cell)
    # a bulleted and a numbered list
    _text(page, 72, 360, "Tasks", 10, "hebo")
    _text(page, 72, 380, "• Prune the old trees")
    _text(page, 72, 394, "• Mend the fences")
    _text(page, 72, 414, "1. Count the crates")
    _text(page, 72, 428, "2. Ship the pears")
    _text(page, 72, 770, "Orchard Quarterly", 8)  # running footer
    _text(page, 530, 770, "7", 8)  # page number


@pytest.fixture(scope="module")
def full():
    doc, page = _doc_page(_full_page)
    return doc, page


def test_heading_from_font_size(full):
    md = page_markdown(full[1])
    assert md.split("\n\n")[0] == "# Harvest Report"


def test_two_columns_in_reading_order_and_hyphenation_joined(full):
    md = page_markdown(full[1])
    assert md.split("\n\n")[1:3] == [LEFT, RIGHT]


def test_ruled_table_is_a_pipe_table(full):
    md = page_markdown(full[1])
    table = [ln for ln in md.split("\n") if ln.startswith("|")]
    assert table == ["| Fruit | Tons | Price |", "| --- | --- | --- |", "| Apples | 120 | 3.10 |",
                     "| Pears | 45 | 2.75 |"]
    assert "Apples 120" not in md  # the cells are not repeated as prose


def test_lists_and_bold_heading(full):
    md = page_markdown(full[1])
    tail = md.split("\n\n")[-5:]
    assert tail == ["### Tasks", "- Prune the old trees", "- Mend the fences", "1. Count the crates",
                    "2. Ship the pears"]


def test_furniture_dropped_unless_kept(full):
    md = page_markdown(full[1])
    assert "Orchard Quarterly" not in md and not md.rstrip().endswith("7")
    kept = page_markdown(full[1], keep_furniture=True)
    assert kept.startswith("Orchard Quarterly - Volume 3\n\n# Harvest Report")
    assert kept.endswith("Orchard Quarterly 7")  # one line of the layer: footer and page number


def test_math_left_as_the_layer_has_it():
    doc, page = _doc_page(lambda p: _text(p, 72, 100, "Energy E = mc^2 and a_i + b_j <= x holds."))
    assert page_markdown(page) == "Energy E = mc^2 and a_i + b_j <= x holds."


def test_spanning_cells_become_html():
    def draw(page):
        top = 100
        for r in range(4):
            page.draw_line((72, top + r * 20), (372, top + r * 20))
        page.draw_line((72, top), (72, top + 60))
        page.draw_line((372, top), (372, top + 60))
        page.draw_line((222, top + 20), (222, top + 60))  # the first row has no divider: one spanning cell
        _text(page, 78, top + 14, "Totals")
        for r, row in enumerate([["a", "1"], ["b", "2"]]):
            for c, cell in enumerate(row):
                _text(page, 78 + c * 150, top + 34 + r * 20, cell)

    doc, page = _doc_page(draw)
    assert page_markdown(page) == ('<table>\n<tr><th colspan="2">Totals</th></tr>\n<tr><td>a</td><td>1</td></tr>\n'
                                   "<tr><td>b</td><td>2</td></tr>\n</table>")


# ---- --text-layer auto: the path per page, and why ---------------------------------------------------

@pytest.fixture()
def mixed(tmp_path):
    """Page 1 digital, page 2 a scan (an image, no text), page 3 a scan with an invisible OCR layer."""
    import pymupdf

    doc = pymupdf.open()
    p = doc.new_page(width=W, height=H)
    _full_page(p)
    scratch = pymupdf.open()
    sp = scratch.new_page(width=W, height=H)
    sp.insert_textbox(pymupdf.Rect(72, 72, 540, 700), "Scanned plums and cherries. " * 30, fontsize=11)
    png = sp.get_pixmap(dpi=72).tobytes("png")
    for invisible in (False, True):
        p = doc.new_page(width=W, height=H)
        p.insert_image(p.rect, stream=png)
        if invisible:
            p.insert_textbox(pymupdf.Rect(72, 72, 540, 700), "Scanned plums and cherries. " * 30, fontsize=11,
                             render_mode=3)
    path = tmp_path / "mixed.pdf"
    doc.save(str(path))
    return path


def test_auto_takes_digital_pages_from_the_layer_and_scans_to_the_model(tiny_processor, mixed):
    eng = ScriptedEngine(tiny_processor, "model text")
    buf = io.StringIO()
    src = D.discover([str(mixed)])[0][0]
    recs = ocr.run_document(eng, src, ocr.OcrOptions(to="json"), buf)
    assert [r.source for r in recs] == ["text-layer", "model", "model"]
    assert len(eng.calls) == 2  # the model never saw the digital page
    out = json.loads(buf.getvalue())
    reasons = [p["reason"] for p in out["pages"]]
    assert reasons[0].startswith("usable text layer") and "no text layer" in reasons[1]
    assert "invisible text" in reasons[2]
    assert out["pages"][0]["text"].startswith("# Harvest Report")
    assert [p["page"] for p in out["pages"]] == [1, 2, 3]


def test_only_warns_on_pages_without_a_usable_layer(mixed):
    buf = io.StringIO()
    src = D.discover([str(mixed)])[0][0]
    recs = ocr.run_document(None, src, ocr.OcrOptions(text_layer="only"), buf)
    assert [bool(r.warnings) for r in recs] == [False, True, True]
    assert "| Apples | 120 | 3.10 |" in buf.getvalue()
