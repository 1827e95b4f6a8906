"""`kvl ocr --text-layer only --to markdown` against pymupdf4llm on olmOCR-Bench (issue #17).

Every page that carries olmOCR-Bench tests (../shared/realdata/documents/olmocr_bench) is converted by

  kvl          tasks.ocr.run_document with --text-layer only --to markdown (what the CLI writes)
  pymupdf4llm  pymupdf4llm.to_markdown(path, pages=[n-1])             (its defaults, as a new user calls it)

and each page's markdown is judged by olmOCR-Bench's rules as `kvl eval olmocr-bench` implements them
(tasks/eval/benchmarks/olmocr.py) and, when the official `olmocr` package is importable, by
olmocr.bench.tests too. Reported per test type; math tests are counted apart (the issue's 87 are the
non-math ones). Speed: pages/s of each converter over the same pages in this process (best of --repeat),
plus the whole `kvl ocr` command on every test PDF, start-up included, against a one-line pymupdf4llm script.

    .venv/bin/python bench/bench_text_layer.py [--data DIR] [--repeat 3] [--dump DIR]
Writes bench/results/text_layer.json.
"""

from __future__ import annotations

import argparse
import io
import json
import subprocess
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))
DATA = ROOT.parent / "shared" / "realdata" / "documents" / "olmocr_bench"
TYPES = ("present", "absent", "order", "table", "math", "baseline")


def load_tests(data: Path) -> dict[tuple[str, int], list[dict]]:
    pages: dict[tuple[str, int], list[dict]] = defaultdict(list)
    for f in sorted(data.glob("*.jsonl")):
        for line in f.read_text().splitlines():
            if line.strip():
                t = json.loads(line)
                pages[(t["pdf"], int(t.get("page", 1)))].append(t)
    return pages


def kvl_page(path: Path, page: int) -> str:
    from kvl_tasks import documents as D
    from kvl_tasks.ocr import OcrOptions, run_document

    src = D.discover([str(path)])[0][0]
    buf = io.StringIO()
    run_document(None, src, OcrOptions(to="markdown", pages=str(page), text_layer="only"), buf)
    return buf.getvalue()


def p4llm_page(path: Path, page: int) -> str:
    import pymupdf4llm

    return pymupdf4llm.to_markdown(str(path), pages=[page - 1], show_progress=False)


def official_runner():
    """olmocr.bench.tests' own checks, if the package is importable (measurement only)."""
    try:
        from olmocr.bench import tests as T
    except Exception:  # noqa: BLE001 -- absent or missing its extras: report ours only
        return None

    def run(md: str, t: dict) -> bool:
        try:
            obj = T.load_single_test(t) if hasattr(T, "load_single_test") else None
            if obj is None:
                return None
            ok, _ = obj.run(md)
            return bool(ok)
        except Exception:  # noqa: BLE001
            return False

    return run


def score(outputs: dict, pages: dict, runner) -> dict[str, Counter]:
    from kvl_tasks.eval.benchmarks.olmocr import run_test

    res = {"pass": Counter(), "total": Counter(), "official": Counter(), "fails": []}
    for key, tests in pages.items():
        md = outputs[key]
        for t in tests:
            ok, _ = run_test(md, t)
            res["total"][t["type"]] += 1
            res["pass"][t["type"]] += ok
            if not ok:
                res["fails"].append(t["id"])
            if runner is not None:
                o = runner(md, t)
                if o is not None:
                    res["official"][t["type"]] += o
    return res


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--dump", type=Path, help="write each page's markdown here")
    ap.add_argument("--only", choices=["kvl", "pymupdf4llm"], help="one converter (faster while developing)")
    ap.add_argument("--no-cli", action="store_true", help="skip the whole-command timing")
    args = ap.parse_args()
    if not args.data.is_dir():
        print(f"skip: {args.data} not found")
        return
    pages = load_tests(args.data)
    keys = sorted(pages)
    convs = {"kvl": kvl_page, "pymupdf4llm": p4llm_page}
    if args.only:
        convs = {args.only: convs[args.only]}
    runner = official_runner()
    report: dict = {"pages": len(keys), "official_scorer": runner is not None, "converters": {}}
    for name, fn in convs.items():
        outputs, best = {}, float("inf")
        for _ in range(max(1, args.repeat)):
            t0 = time.perf_counter()
            for pdf, n in keys:
                outputs[(pdf, n)] = fn(args.data / "pdfs" / pdf, n)
            best = min(best, time.perf_counter() - t0)
        if args.dump:
            d = args.dump / name
            d.mkdir(parents=True, exist_ok=True)
            for (pdf, n), md in outputs.items():
                (d / f"{pdf.replace('/', '__')}-{n}.md").write_text(md)
        s = score(outputs, pages, runner)
        report["converters"][name] = {"pass": dict(s["pass"]), "total": dict(s["total"]),
                                      "official": dict(s["official"]) if runner else None,
                                      "pages_per_s": len(keys) / best, "fails": s["fails"]}
    if not args.no_cli and not args.only:
        pdfs = sorted({str(args.data / "pdfs" / p) for p, _ in keys})
        kvl = [str(Path(sys.executable).with_name("kvl")), "ocr", "--text-layer", "only", "--out"]
        p4 = [sys.executable, "-c", "import sys, pymupdf4llm\nfor p in sys.argv[1:]: pymupdf4llm.to_markdown(p, "
              "show_progress=False)", *pdfs]
        import tempfile

        walls = {}
        for name, cmd in (("kvl", None), ("pymupdf4llm", p4)):
            best = float("inf")
            for _ in range(max(1, args.repeat)):
                with tempfile.TemporaryDirectory() as tmp:
                    c = cmd or [*kvl, tmp, "--force", *pdfs]
                    t0 = time.perf_counter()
                    subprocess.run(c, check=True, capture_output=True)
                    best = min(best, time.perf_counter() - t0)
            walls[name] = best
        report["whole_command_s"] = walls
    # ---- table ----
    names = list(report["converters"])
    print(f"{report['pages']} pages; official scorer: {'yes' if runner else 'not installed'}")
    print("| test type | " + " | ".join(names) + " |")
    print("|---|" + "---|" * len(names))
    for ty in TYPES:
        tot = report["converters"][names[0]]["total"].get(ty, 0)
        if not tot:
            continue
        cells = []
        for n in names:
            c = report["converters"][n]
            off = f" ({c['official'].get(ty, 0)})" if c["official"] is not None else ""
            cells.append(f"{c['pass'].get(ty, 0)}/{tot}{off}")
        print(f"| {ty} | " + " | ".join(cells) + " |")
    for n in names:
        c = report["converters"][n]
        nm = sum(v for k, v in c["pass"].items() if k not in ("math", "baseline"))
        tm = sum(v for k, v in c["total"].items() if k not in ("math", "baseline"))
        c["non_math"] = [nm, tm]
    print("| non-math | " + " | ".join("{}/{}".format(*report["converters"][n]["non_math"]) for n in names) + " |")
    print("| pages/s (in process) | " + " | ".join(f"{report['converters'][n]['pages_per_s']:.1f}" for n in names)
          + " |")
    if "whole_command_s" in report:
        w = report["whole_command_s"]
        print("| whole command, all test PDFs (s) | " + " | ".join(f"{w[n]:.2f}" for n in names) + " |")
    out = HERE / "results"
    out.mkdir(exist_ok=True)
    (out / "text_layer.json").write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
