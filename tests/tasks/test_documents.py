"""tasks/documents.py: sources, page ranges, render resolution, bad documents, token budgeting."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from kvl_core.errors import KvlError
from kvl_core.processor.image import ImageProcessor
from kvl_tasks import documents as D

from .helpers import bomb_png, make_pdf, zero_page_pdf


def _open(path, password=None):
    sources, _ = D.discover([str(path)])
    return D.open_document(sources[0], password)


# ---- sources -------------------------------------------------------------------------------------

def test_discover_walks_folders_sorted_and_skips_unsupported(tmp_path):
    (tmp_path / "b").mkdir()
    Image.new("RGB", (30, 30)).save(tmp_path / "b" / "z.png")
    Image.new("RGB", (30, 30)).save(tmp_path / "a.JPG")
    make_pdf(tmp_path / "b" / "doc.pdf", ["x"])
    (tmp_path / "notes.txt").write_text("hello")
    (tmp_path / ".hidden.png").write_bytes(b"")
    sources, skipped = D.discover([str(tmp_path)])
    assert [str(s.rel) for s in sources] == ["a.JPG", "b/doc.pdf", "b/z.png"]
    assert [s.kind for s in sources] == ["image", "pdf", "image"]
    assert skipped == 1


def test_explicit_unsupported_file_is_one_clear_error(tmp_path):
    f = tmp_path / "notes.txt"
    f.write_text("just text")
    with pytest.raises(KvlError, match=r"notes\.txt: unsupported file type '\.txt'"):
        D.discover([str(f)])
    with pytest.raises(KvlError, match="no such file"):
        D.discover([str(tmp_path / "missing.pdf")])


def test_content_wins_over_suffix_and_stdin_is_read(tmp_path):
    pdf = make_pdf(tmp_path / "really_a_pdf.png", ["hello"])
    assert D.discover([str(pdf)])[0][0].kind == "pdf"
    sources, _ = D.discover(["-"], stdin=io.BytesIO(pdf.read_bytes()))
    assert sources[0].kind == "pdf" and sources[0].label == "<stdin>"
    with _open_source(sources[0]) as doc:
        assert doc.count == 1 and "hello" in doc.text(1)


def _open_source(source):
    return D.open_document(source)


# ---- page ranges ---------------------------------------------------------------------------------

def test_parse_pages():
    assert D.parse_pages(None, 4, "f") == [1, 2, 3, 4]
    assert D.parse_pages("1-3,7", 9, "f") == [1, 2, 3, 7]
    assert D.parse_pages("8-, 2", 9, "f") == [8, 9, 2]
    assert D.parse_pages("3,3,2-3", 9, "f") == [3, 2]
    with pytest.raises(KvlError, match=r"doc\.pdf: page 12 is outside the document \(it has 9 pages\)"):
        D.parse_pages("2,12", 9, "doc.pdf")
    for bad in ("0", "3-1", "a", "1-2-3", "-", ""):
        if bad:
            with pytest.raises(KvlError, match="--pages"):
                D.parse_pages(bad, 9, "f")


# ---- resolution ----------------------------------------------------------------------------------

@pytest.mark.parametrize("limit", [256, 4096])
@pytest.mark.parametrize("size", [(612, 792), (842, 595), (200, 1400)])
def test_fit_dpi_fills_the_image_budget_without_downscaling(tmp_path, limit, size):
    pdf = make_pdf(tmp_path / "p.pdf", ["text"], size=size)
    proc = ImageProcessor(in_token_limit=limit)
    with _open(pdf) as doc:
        dpi = D.fit_dpi(*doc.size_pt(1), limit)
        w, h = doc.render(1, dpi).image.size
        plan = proc.plan(w, h)
        assert plan.resized_wh == (w, h)  # the processor keeps every rendered pixel
        assert (w // 14) * (h // 14) >= 0.9 * limit  # and the budget is not wasted
        finer = doc.render(1, dpi * 1.05).image.size
        assert proc.plan(*finer).resized_wh != finer  # a little finer would already be thrown away


def test_render_never_allocates_a_giant_pixmap(tmp_path):
    pdf = make_pdf(tmp_path / "poster.pdf", ["poster"], size=(14000, 14000))
    with _open(pdf) as doc:
        page = doc.render(1, 600)
    assert page.size[0] * page.size[1] <= D.MAX_RENDER_PIXELS and page.dpi < 600


# ---- bad documents -------------------------------------------------------------------------------

def test_encrypted_pdf_needs_the_password(tmp_path):
    pdf = make_pdf(tmp_path / "secret.pdf", ["classified text"], user_pw="s3cret")
    with pytest.raises(KvlError, match=r"secret\.pdf: the PDF is encrypted; pass its password with --password"):
        _open(pdf)
    with pytest.raises(KvlError, match=r"secret\.pdf: wrong password"):
        _open(pdf, "nope")
    with _open(pdf, "s3cret") as doc:
        assert "classified" in doc.text(1)


def test_corrupt_truncated_and_empty_pdfs(tmp_path):
    garbage = tmp_path / "garbage.pdf"
    garbage.write_bytes(b"%PDF-1.7\n" + bytes(range(256)) * 4)
    with pytest.raises(KvlError, match=r"garbage\.pdf: "):
        with _open(garbage) as doc:
            doc.render(1, 72)
    good = make_pdf(tmp_path / "good.pdf", ["some text"] * 3).read_bytes()
    cut = tmp_path / "cut.pdf"
    cut.write_bytes(good[:60])
    with pytest.raises(KvlError, match=r"cut\.pdf: "):
        with _open(cut) as doc:
            doc.render(1, 72)
    with pytest.raises(KvlError, match=r"zero\.pdf: the PDF has no pages"):
        _open(zero_page_pdf(tmp_path / "zero.pdf"))


def test_decompression_bomb_is_refused_from_the_header(tmp_path):
    with pytest.raises(KvlError, match=r"bomb\.png: .*decompression bomb"):
        _open(bomb_png(tmp_path / "bomb.png"))
    tif = tmp_path / "bomb.tif"
    Image.new("1", (8, 8)).save(tif)
    with pytest.raises(KvlError, match=r"bomb\.tif"):
        with _open(bomb_png(tif)) as doc:  # PNG bytes behind a .tif name: the content decides
            doc.render(1)


def test_truncated_image_names_the_file(tmp_path):
    buf = io.BytesIO()
    Image.effect_noise((200, 200), 50).convert("RGB").save(buf, "PNG")
    bad = tmp_path / "half.png"
    bad.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    with pytest.raises(KvlError, match=r"half\.png: corrupt or truncated image"):
        _open(bad)


def test_multi_frame_tiff_pages(tmp_path):
    colours = ["red", "green", "blue"]
    frames = [Image.new("RGB", (40, 30), c) for c in colours]
    path = tmp_path / "scan.tiff"
    frames[0].save(path, save_all=True, append_images=frames[1:])
    with _open(path) as doc:
        assert doc.count == 3
        got = [doc.render(n).image.getpixel((5, 5)) for n in (1, 2, 3)]
    assert got == [(255, 0, 0), (0, 128, 0), (0, 0, 255)]


# ---- text layer and budgets ----------------------------------------------------------------------

def test_usable_text():
    assert D.usable_text("A real sentence on a real page of a document.")
    assert not D.usable_text("  12 \n")
    assert not D.usable_text("\ufffd" * 40 + "abc")


def test_prompt_tokens_matches_the_processor_exactly(tiny_processor):
    msgs = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": [{"type": "text", "text": "[p. 1]"}, {"type": "image", "image": Image.new("RGB", (300, 410))},
                                     {"type": "text", "text": "[p. 2]"}, {"type": "image", "image": Image.new("RGB", (90, 50))},
                                     {"type": "text", "text": "What is on these pages?"}]},
        {"role": "assistant", "content": "Nothing much."},
        {"role": "user", "content": "Really?"},
    ]
    assert D.prompt_tokens(tiny_processor, msgs) == len(tiny_processor.encode(msgs).input_ids)


def test_clip_tokens(tiny_processor):
    tok = tiny_processor.tokenizer
    text = "héllo wörld " * 20
    clipped = D.clip_tokens(tok, text, 25)
    assert len(tok.encode(clipped)) <= 25 and text.startswith(clipped) and clipped
    assert D.clip_tokens(tok, text, 10_000) == text and D.clip_tokens(tok, text, 0) == ""


def test_streaming_pages_keeps_memory_flat(tmp_path):
    """Render + preprocess page after page: RSS must not grow with the page count (it grew ~3 MB per page
    before kvl_core.processor.image.steady_memory pinned glibc's mmap threshold)."""
    import pymupdf

    src = pymupdf.open()
    src.new_page(width=612, height=792).insert_textbox(pymupdf.Rect(50, 50, 560, 740), "dense words " * 800,
                                                        fontsize=7)
    doc = pymupdf.open()
    for _ in range(25):
        doc.insert_pdf(src)
    doc.save(tmp_path / "long.pdf")
    ip = ImageProcessor(in_token_limit=4096)

    def rss_mb() -> float:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * 4096 / 2**20

    with _open(tmp_path / "long.pdf") as d:
        for n in range(1, 26):
            ip.preprocess(d.render(n, D.fit_dpi(612, 792, 4096)).image)
            if n == 5:
                start = rss_mb()
    assert rss_mb() - start < 25, (start, rss_mb())  # unpinned: ~65 MB over these 20 pages
