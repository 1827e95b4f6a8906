"""`kvl video scenes` vs PySceneDetect on PySceneDetect's own test videos: cut accuracy and detection speed.

    .venv/bin/python bench/bench_video.py [--reps 5] [--backend opencv|pyav] [--fast] [--profile]
    # table on stdout, JSON in bench/results/video.json

For each real file in ../shared/realdata/video and each detector pair (kvl adaptive/content/threshold vs
PySceneDetect's AdaptiveDetector/ContentDetector/ThresholdDetector, all at default settings, kvl with
--no-fades so both run one detector), it reports:
* precision and recall of the cuts at ±1 frame against `goldens/<file>.<Detector>.default.json`, the cut lists
  PySceneDetect's own test suite pins. Cut times are put on the nominal-rate timeline the goldens number frames
  on (round(seconds * fps)); for constant-rate files that is the frame index.
* detection cost: CPU time per frame (all threads; the primary measure, as it holds on a shared machine) and
  wall-clock frames per second, for open + decode + score + detect, the median of --reps runs, the tools
  interleaved run by run so that machine load hits both alike, both at PySceneDetect's automatic downscale
  (longer side 256 px). `--fast` adds kvl with --fast-decode (deblocking skipped) as a third column.
* `--profile`: where the time goes, stage by stage, for both tools (CPU ms per frame, single pass, no threads
  for kvl's stages): decoding alone, decoding + the detection pixels, + scoring; OpenCV's decoding alone, its
  decoding + full-size BGR conversion, and the whole of PySceneDetect.
counter.mp4 has no golden; for it the check is that every one of its 30 frames is found at its own presentation
time (frame N shows "Frame = N" at (N-1)/10 s), by the scan and by keyframe grabs.

PySceneDetect is installed into the venv for this benchmark only when missing (`pip install scenedetect`); it is
not a kvl dependency.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO))
VIDEOS = REPO.parent / "shared" / "realdata" / "video"
FILES = ("testvideo.mp4", "fades.mp4", "goldeneye-vfr-drop3.mp4", "counter.mp4")
PAIRS = (("adaptive", "AdaptiveDetector"), ("content", "ContentDetector"), ("threshold", "ThresholdDetector"))


def cpu_seconds() -> float:
    """CPU time of this process (all its threads) and its finished children."""
    import resource

    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def ensure_scenedetect():
    try:
        import scenedetect  # noqa: F401
    except ImportError:
        print("installing scenedetect into this venv for the benchmark ...", file=sys.stderr)
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "scenedetect"], check=True)
    import scenedetect

    return scenedetect


def match(found: list[int], golden: list[int], tol: int = 1) -> tuple[float | None, float | None]:
    """Precision and recall with each golden cut matched to at most one found cut within ±tol frames."""
    free, hits = list(found), 0
    for g in golden:
        near = [f for f in free if abs(f - g) <= tol]
        if near:
            free.remove(min(near, key=lambda f: abs(f - g)))
            hits += 1
    precision = hits / len(found) if found else (1.0 if not golden else 0.0)
    recall = hits / len(golden) if golden else (1.0 if not found else None)
    return precision, recall


def run_pyscenedetect(sd, path: Path, det: str, backend: str) -> tuple[list[float], int, float, float]:
    detector = getattr(sd, det)()
    t0, c0 = time.perf_counter(), cpu_seconds()
    video = sd.open_video(str(path), backend=backend)
    manager = sd.SceneManager()  # auto_downscale on: 256 px wide, as kvl
    manager.add_detector(detector)
    frames = manager.detect_scenes(video, show_progress=False)
    seconds, cpu = time.perf_counter() - t0, cpu_seconds() - c0
    cuts = [start.seconds for start, _ in manager.get_scene_list()[1:]]
    return cuts, frames, seconds, cpu


def run_kvl(path: Path, det: str, fast: bool = False) -> tuple[list[float], int, float, float]:
    from kvl_tasks.video.scenes import find_scenes

    t0, c0 = time.perf_counter(), cpu_seconds()
    r = find_scenes(path, det, fades=False, fast=fast)
    return r.cut_times, r.frames_scanned, time.perf_counter() - t0, cpu_seconds() - c0


def profile(path: Path, reps: int) -> dict:
    """CPU ms per frame of each stage, median of `reps` (each stage includes the ones before it)."""
    import av
    import cv2

    from kvl_tasks.video.decode import detect_size, probe
    from kvl_tasks.video.detect import Scorer
    from kvl_tasks.video.scan import DECODE_THREADS, _decode_pyav, _pyav_batches

    info = probe(path)
    size = detect_size(info)

    def pyav_decode():
        with av.open(str(path)) as c:
            st = c.streams.video[0]
            if DECODE_THREADS != 1:
                st.thread_type, st.thread_count = "AUTO", DECODE_THREADS
            return sum(1 for _ in c.decode(st))

    def kvl_pixels(score: bool):
        def run():
            scorer, n = Scorer(intensity=False), 0
            for b in _pyav_batches(_decode_pyav(info, 0, info.frame_count, False), info, size, 16):
                n += len(b.index)
                if score:
                    scorer.add(b.index, b.time, b.rgb)
            return n
        return run

    def cv_loop(read: bool):
        def run():
            cap, n = cv2.VideoCapture(str(path)), 0
            while (cap.read()[0] if read else cap.grab()):
                n += 1
            cap.release()
            return n
        return run

    sd = ensure_scenedetect()

    def pysd():
        return run_pyscenedetect(sd, path, "AdaptiveDetector", "opencv")[1]

    stages = {"kvl decode": pyav_decode, "kvl decode + pixels": kvl_pixels(False),
              "kvl decode + pixels + HSV scores": kvl_pixels(True),
              "kvl find_scenes (threaded)": lambda: run_kvl(path, "adaptive")[1],
              "OpenCV decode": cv_loop(False), "OpenCV decode + BGR": cv_loop(True), "PySceneDetect adaptive": pysd}
    runs = {k: [] for k in stages}
    for _ in range(reps):  # interleaved
        for k, fn in stages.items():
            c0 = cpu_seconds()
            n = fn()
            runs[k].append(1000 * (cpu_seconds() - c0) / max(n, 1))
    return {k: round(statistics.median(v), 3) for k, v in runs.items()}


def counter_check(path: Path) -> dict:
    import numpy as np

    from kvl_tasks.video.decode import grab, probe
    from kvl_tasks.video.scan import scan

    info = probe(path)
    scanned = np.concatenate([b.time for b in scan(info)])
    ok_scan = int(np.isclose(scanned, np.arange(len(scanned)) / 10, atol=1e-6).sum())
    got = grab(info, [k / 10 + 0.05 for k in range(30)])
    ok_grab = sum(g.index == k and abs(g.time - k / 10) < 1e-6 for k, g in enumerate(got))
    return {"frames": info.frame_count, "scan_times_right": ok_scan, "grabbed_frames_right": ok_grab}


def figure(out: Path) -> None:
    """docs figure: what the detectors see on testvideo.mp4 (scores, adaptive ratio, intensity) and where they cut."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from kvl_tasks.video.decode import probe
    from kvl_tasks.video.detect import Scorer, detect
    from kvl_tasks.video.scan import scan

    info = probe(VIDEOS / "testvideo.mp4")
    scorer = Scorer()
    for b in scan(info):
        scorer.add(b.index, b.time, b.rgb)
    s = scorer.scores
    c = s.content.astype(float)
    avg = np.convolve(c, [0.25, 0.25, 0, 0.25, 0.25], "same")
    ratio = np.where(avg > 1e-5, np.minimum(c / np.maximum(avg, 1e-12), 255), 0)
    ratio = np.where(c >= 15, ratio, 0)  # the adaptive detector only considers frames scoring >= 15
    fig, axes = plt.subplots(3, 1, figsize=(10, 6.5), sharex=True)
    axes[0].plot(s.index, c, lw=0.8)
    axes[0].axhline(27, ls="--", c="gray", lw=0.8)
    axes[0].set_ylabel("HSV change")
    axes[1].plot(s.index, ratio, lw=0.8, c="tab:orange")
    axes[1].axhline(3, ls="--", c="gray", lw=0.8)
    axes[1].set_ylim(0, 12)
    axes[1].set_ylabel("ratio (score>=15)")
    axes[2].plot(s.index, s.intensity, lw=0.8, c="tab:green")
    axes[2].axhline(12, ls="--", c="gray", lw=0.8)
    axes[2].set_ylabel("mean intensity")
    axes[2].set_xlabel("frame")
    for ax, det, color in zip(axes, ("content", "adaptive", "threshold"), ("tab:blue", "tab:orange", "tab:green")):
        for p in detect(s, det, fades=False):
            ax.axvline(int(s.index[p]), c=color, alpha=0.35, lw=3)
    fig.suptitle("testvideo.mp4: frame scores, thresholds (dashed) and kvl's cuts (bands)")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=90)
    print(f"wrote {out.relative_to(REPO)}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--fast", action="store_true", help="also run kvl with --fast-decode")
    ap.add_argument("--profile", action="store_true", help="also time each stage of both tools")
    ap.add_argument("--backend", default="opencv", help="PySceneDetect's decoder: opencv (its default) or pyav")
    ap.add_argument("--figure", action="store_true", help="only draw docs/figures/video-scores.png")
    args = ap.parse_args()
    if not VIDEOS.exists():
        sys.exit(f"{VIDEOS} is not present")
    if args.figure:
        return figure(REPO / "docs" / "figures" / "video-scores.png")
    sd = ensure_scenedetect()
    from kvl_tasks.video.decode import probe

    tools = ["kvl", "pyscenedetect"] + (["kvl_fast"] if args.fast else [])
    rows = []
    for name in FILES:
        path = VIDEOS / name
        fps = probe(path).fps
        for ours, theirs in PAIRS:
            gpath = VIDEOS / "goldens" / f"{name}.{theirs}.default.json"
            golden = json.loads(gpath.read_text())["cuts"] if gpath.exists() else None
            runs = {tool: [] for tool in tools}
            for _ in range(args.reps):  # interleaved: a busy moment slows both
                for tool in tools:
                    runs[tool].append(run_kvl(path, ours) if tool == "kvl" else run_kvl(path, ours, fast=True)
                                      if tool == "kvl_fast" else run_pyscenedetect(sd, path, theirs, args.backend))
            row = {"file": name, "detector": ours, "golden": golden}
            for tool, tool_runs in runs.items():
                cuts, frames = tool_runs[0][0], tool_runs[0][1]
                timeline = [round(t * fps) for t in cuts]
                p, r = match(timeline, golden) if golden is not None else (None, None)
                row[tool] = {"cuts": timeline, "precision": p, "recall": r, "frames": frames,
                             "seconds": round(statistics.median(x[2] for x in tool_runs), 4),
                             "fps": round(statistics.median(frames / x[2] for x in tool_runs), 1),
                             "cpu_ms_per_frame": round(statistics.median(1000 * x[3] / frames for x in tool_runs), 3),
                             "cpu_ms_per_frame_runs": [round(1000 * x[3] / frames, 3) for x in tool_runs],
                             "same_cuts_every_run": all(x[0] == cuts for x in tool_runs)}
            k, s = row["kvl"], row["pyscenedetect"]
            row["speedup"] = round(k["fps"] / s["fps"], 2)  # wall
            row["cpu_ratio"] = round(s["cpu_ms_per_frame"] / k["cpu_ms_per_frame"], 2)
            rows.append(row)
            print(f"  {name} {ours}: done", file=sys.stderr)
    prof = {}
    if args.profile:
        for name in FILES:
            prof[name] = profile(VIDEOS / name, args.reps)
            print(f"  profile {name}: done", file=sys.stderr)
    counter = counter_check(VIDEOS / "counter.mp4")
    result = {"rows": rows, "counter": counter, "profile": prof, "reps": args.reps, "statistic": "median",
              "pyscenedetect_backend": args.backend,
              "pyscenedetect_version": sd.__version__, "python": platform.python_version(),
              "machine": f"{platform.machine()}, {__import__('os').cpu_count()} CPUs"}
    out = HERE / "results" / "video.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")

    def pr(x):
        return "  -  " if x is None else f"{x:.2f}"

    print(f"\nkvl video scenes vs PySceneDetect {sd.__version__} ({args.backend}), median of {args.reps}, ±1 frame")
    print(f"{'file':24} {'detector':9} {'golden':20} {'kvl P/R':10} {'PySD P/R':10} {'CPU ms/frame kvl/PySD':>22} "
          f"{'CPU ratio':>9} {'kvl fps':>7} {'PySD fps':>8} {'wall':>6}" + ("  fast: P/R, CPU ms" if args.fast else ""))
    for r in rows:
        k, s = r["kvl"], r["pyscenedetect"]
        line = (f"{r['file']:24} {r['detector']:9} {str(r['golden']):20} {pr(k['precision'])}/{pr(k['recall'])}  "
                f"{pr(s['precision'])}/{pr(s['recall'])}  {k['cpu_ms_per_frame']:>10.2f} / {s['cpu_ms_per_frame']:<9.2f} "
                f"{r['cpu_ratio']:8.2f}x {k['fps']:7.0f} {s['fps']:8.0f} {r['speedup']:5.2f}x")
        if args.fast:
            f = r["kvl_fast"]
            line += f"  {pr(f['precision'])}/{pr(f['recall'])}, {f['cpu_ms_per_frame']:.2f}"
        print(line)
    for name, stages in prof.items():
        print(f"\nprofile {name} (CPU ms/frame, median of {args.reps}):")
        for k, v in stages.items():
            print(f"  {k:36} {v:7.3f}")
    print(f"counter.mp4: {counter['scan_times_right']}/{counter['frames']} scanned frame times right, "
          f"{counter['grabbed_frames_right']}/{counter['frames']} grabbed frames right")
    print(f"wrote {out.relative_to(REPO)}")


if __name__ == "__main__":
    main()
