"""Page throughput and memory of the document tasks' input side: render + preprocess, streamed.

Generates a long PDF (default 800 letter pages of dense text with a table-like grid, ten distinct page
templates repeated), then, in a fresh subprocess so that peak RSS belongs to this work alone, streams it
page by page the way the tasks do (tasks/documents.py):

  ocr      read the text layer and render at the DPI that fills the Instruct image budget (4096 patches,
           documents.fit_dpi), then ImageProcessor.preprocess -> pixel_values      (`kvl ocr`'s input path)
  pdf-ask  render at 144 dpi (MMLongBench-Doc), PNG-encode for the session's page cache, then
           preprocess (the processor downscales to the budget)                       (`kvl pdf ask`'s path)

Reported: pages/s (wall) and CPU ms per page (independent of other load on a shared machine), RSS after imports, RSS at 10% of the pages and at the end, and peak RSS. Flat
memory means the end RSS is close to the 10% RSS whatever the page count. The model itself is not run: this
measures what kvl adds around it.

    .venv/bin/python bench/bench_documents.py [--pages 800] [--ask-pages 60]
Writes bench/results/documents.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

WORDS = ("kimi vision language model page render stream budget token patch merge table figure equation "
         "reading order heading footnote citation appendix section paragraph").split()


def make_pdf(path: Path, pages: int) -> float:
    import pymupdf

    t0 = time.perf_counter()
    templates = pymupdf.open()
    for k in range(10):
        page = templates.new_page(width=612, height=792)
        words = [WORDS[(k * 7 + i * 3) % len(WORDS)] for i in range(900)]
        page.insert_textbox(pymupdf.Rect(54, 54, 558, 520), " ".join(words), fontsize=8)
        for r in range(8):  # a ruled table: vector graphics as well as text
            y = 540 + r * 24
            page.draw_line((54, y), (558, y))
            for c in range(4):
                page.insert_text((60 + c * 126, y + 16), f"{k}.{r}.{c}", fontsize=8)
    # Append in blocks of 100 pages: inserting 10 pages at a time into a growing document is quadratic.
    block = pymupdf.open()
    for _ in range(10):
        block.insert_pdf(templates)
    doc = pymupdf.open()
    while doc.page_count < pages:
        doc.insert_pdf(block, to_page=min(99, pages - doc.page_count - 1))
    doc.save(str(path), deflate=True)
    return time.perf_counter() - t0


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def child(path: str, mode: str, pages: int) -> dict:
    """Runs in a fresh interpreter: stream `pages` pages through one input path."""
    import io

    from kvl_core.processor.image import ImageProcessor
    from kvl_tasks import documents as D

    ip = ImageProcessor(in_token_limit=4096)  # Kimi-VL-A3B-Instruct / Thinking
    src = D.discover([path])[0][0]
    with D.open_document(src) as doc:
        base = rss_mb()
        marks, patches, png_bytes = {}, 0, 0
        cpu0 = os.times()
        t0 = time.perf_counter()
        for n in range(1, pages + 1):
            if mode == "ocr":
                # --text-layer auto (the default) also reads each page's text layer
                page = doc.render(n, D.page_dpi(doc, n, ip.in_token_limit, ip.patch_size), with_text=True)
            else:
                page = doc.render(n, 144.0)
                buf = io.BytesIO()
                page.image.save(buf, "PNG", compress_level=1)
                png_bytes += buf.tell()
            pv, (gh, gw) = ip.preprocess(page.image)
            patches += gh * gw
            del page, pv
            if n == max(1, pages // 10):
                marks["rss_mb_at_10pct"] = rss_mb()
        seconds = time.perf_counter() - t0
        cpu1 = os.times()
    # CPU seconds per page do not depend on what else the (shared) machine is running; wall pages/s do.
    cpu_s = (cpu1.user - cpu0.user) + (cpu1.system - cpu0.system)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"mode": mode, "pages": pages, "seconds": round(seconds, 2), "pages_per_s": round(pages / seconds, 1),
            "cpu_ms_per_page": round(1000 * cpu_s / pages, 1),
            "mean_patches_per_page": round(patches / pages), "rss_mb_after_open": round(base, 1),
            **{k: round(v, 1) for k, v in marks.items()}, "rss_mb_end": round(rss_mb(), 1),
            "peak_rss_mb": round(peak, 1), "png_cache_mb": round(png_bytes / 2**20, 1) if png_bytes else None}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--pages", type=int, default=800, help="2000 took ~3.5 min on 2 shared cores")
    ap.add_argument("--ask-pages", type=int, default=60, help="pages for the 144-dpi path (slower per page)")
    ap.add_argument("--child", nargs=3, metavar=("PDF", "MODE", "PAGES"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.child[0], args.child[1], int(args.child[2]))))
        return
    with tempfile.TemporaryDirectory() as tmp:
        pdf = Path(tmp) / "long.pdf"
        gen_s = make_pdf(pdf, args.pages)
        runs = []
        for mode, n in (("ocr", args.pages), ("pdf-ask", min(args.ask_pages, args.pages))):
            out = subprocess.run([sys.executable, __file__, "--child", str(pdf), mode, str(n)],
                                 capture_output=True, text=True, check=True)
            runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
        size_mb = pdf.stat().st_size / 2**20
    result = {"pdf_pages": args.pages, "pdf_mb": round(size_mb, 1), "generate_s": round(gen_s, 1),
              "cpu": platform.processor() or platform.machine(), "cpus": os.cpu_count(), "runs": runs}
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / "documents.json").write_text(json.dumps(result, indent=2) + "\n")
    print(f"{args.pages}-page PDF ({size_mb:.1f} MB) generated in {gen_s:.1f} s")
    print(f"{'path':8} {'pages':>6} {'pages/s':>8} {'cpu ms/p':>9} {'patches':>8} {'RSS open':>9} {'RSS 10%':>8} "
          f"{'RSS end':>8} {'peak':>7}")
    for r in runs:
        print(f"{r['mode']:8} {r['pages']:>6} {r['pages_per_s']:>8} {r['cpu_ms_per_page']:>9} {r['mean_patches_per_page']:>8} "
              f"{r['rss_mb_after_open']:>8}M {r.get('rss_mb_at_10pct', 0):>7}M {r['rss_mb_end']:>7}M {r['peak_rss_mb']:>6}M")


if __name__ == "__main__":
    main()
