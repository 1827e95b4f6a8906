"""`kvl video scenes`: frame-accurate scene splitting with timestamps and descriptions (Kimi-VL Figure 11;
tasks.md §1.2, §2.1, §4).

Thin on purpose: options are parsed here; the work is scenes.find_scenes (decode.py + detect.py), then
describe.py (the model), export.py and split.py (files). Nothing heavy is imported at module level: `kvl --help`
loads this module.
"""

from __future__ import annotations

import sys
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from kvl_cli.options import ApiKeyOpt, BaseUrlOpt, DeviceOpt, DtypeOpt, ModelBackendOpt, ModelOpt

app = typer.Typer(name="video", help="Video: scene splitting with exact cut frames, timestamps and descriptions.",
                  no_args_is_help=True, rich_markup_mode="rich", add_completion=False)


class Format(str, Enum):
    table = "table"
    json = "json"
    csv = "csv"
    markdown = "markdown"
    edl = "edl"


class Detector(str, Enum):
    adaptive = "adaptive"
    content = "content"
    threshold = "threshold"


class Mode(str, Enum):
    keyframes = "keyframes"
    model = "model"


class SplitMode(str, Enum):
    auto = "auto"
    copy = "copy"
    encode = "encode"


class Backend(str, Enum):
    pyav = "pyav"
    decord = "decord"


EXAMPLES = """
[bold]Examples[/bold]
  kvl video scenes film.mp4 --no-describe                 [dim]# cuts only, as a table[/dim]
  kvl video scenes film.mp4 -o scenes.csv                 [dim]# PySceneDetect list-scenes CSV[/dim]
  kvl video scenes film.mp4 --model moonshotai/Kimi-VL-A3B-Instruct -o scenes.json
  kvl video scenes film.mp4 --mode model                  [dim]# the model splits, snapped to exact cuts[/dim]
  kvl video scenes film.mp4 --split clips/ --images stills/ --start 1:00 --end 5:00
"""


@app.command("scenes", epilog=EXAMPLES)
def scenes_command(
    file: Annotated[Path, typer.Argument(help="The video file.", show_default=False)],
    fmt: Annotated[Optional[Format], typer.Option("--format", "-f", help="Output format (default: from --out's extension, else table). csv has PySceneDetect's list-scenes columns; edl is CMX 3600.")] = None,
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="Write the scene list to this file instead of the terminal.")] = None,
    describe: Annotated[Optional[bool], typer.Option("--describe/--no-describe", help="Describe each scene with the model (default: on when a model is configured).", show_default=False)] = None,
    mode: Annotated[Mode, typer.Option(help="keyframes: the detector splits, the model describes each scene; model: the model splits the whole video (the paper's way), boundaries snapped to detected cuts.")] = Mode.keyframes,
    detector: Annotated[Detector, typer.Option(help="adaptive: content change relative to its neighbours (camera motion safe); content: fixed threshold; threshold: fades through black only. adaptive and content also find dissolves and same-colour cuts, and ignore flashes (see --pysd-compat).")] = Detector.adaptive,
    threshold: Annotated[Optional[float], typer.Option(help="Detector threshold (default: adaptive 3.0 ratio, content 27, threshold 12 mean intensity).", show_default=False)] = None,
    min_scene_len: Annotated[str, typer.Option(help="Shortest scene: seconds (0.6s), a clock time, or frames (15).")] = "0.6s",
    fades: Annotated[bool, typer.Option("--fades/--no-fades", help="With adaptive/content, also cut at fades through black.")] = True,
    pysd_compat: Annotated[bool, typer.Option("--pysd-compat", help="PySceneDetect's detectors alone, for its exact cut lists: no dissolves, no luma-structure cuts (two pictures of the same colour), no flash filter.")] = False,
    start: Annotated[Optional[str], typer.Option(help="Only look at the video from this time (seconds or HH:MM:SS.mmm).", show_default=False)] = None,
    end: Annotated[Optional[str], typer.Option(help="... up to this time.", show_default=False)] = None,
    split: Annotated[Optional[Path], typer.Option(help="Write one video file per scene into this folder.", show_default=False)] = None,
    split_mode: Annotated[SplitMode, typer.Option(help="auto: stream copy where the scene starts and ends on keyframes, re-encode elsewhere (exact frames either way).")] = SplitMode.auto,
    images: Annotated[Optional[Path], typer.Option(help="Save keyframes (JPEG) of every scene into this folder.", show_default=False)] = None,
    num_images: Annotated[int, typer.Option("--num-images", "-n", min=1, max=50, help="Keyframes per scene for --images.")] = 3,
    model: ModelOpt = None,
    model_backend: ModelBackendOpt = None,
    base_url: BaseUrlOpt = None,
    api_key: ApiKeyOpt = None,
    frames_per_scene: Annotated[int, typer.Option(min=1, max=16, help="Keyframes shown to the model per scene.")] = 3,
    max_frames: Annotated[int, typer.Option(min=2, max=256, help="--mode model: frames sampled across the video (fewer when the context is small).")] = 64,
    max_new_tokens: Annotated[Optional[int], typer.Option(min=1, help="Answer budget per model call (default: 96 per scene, 1024 for --mode model; capped by the context).", show_default=False)] = None,
    temperature: Annotated[Optional[float], typer.Option(help="Sampling temperature for descriptions (default: the checkpoint's).", show_default=False)] = None,
    seed: Annotated[Optional[int], typer.Option(help="Seed for sampling.", show_default=False)] = None,
    device: DeviceOpt = "cpu",
    dtype: DtypeOpt = None,
    backend: Annotated[Backend, typer.Option(help="Decoder for the detection scan (keyframes use decord when it agrees with the file's timestamps, else PyAV).")] = Backend.pyav,
    width: Annotated[int, typer.Option(min=16, max=4096, help="Detection size: the frame's longer side in pixels (PySceneDetect's automatic downscale uses 256).")] = 256,
    exact_decode: Annotated[bool, typer.Option("--exact-decode/--fast-decode", help="--fast-decode skips the codec's deblocking filter during detection: ~20% faster, but scores near a threshold can move (inside fades, say), so a cut there may differ from PySceneDetect's.")] = True,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars or summary line.")] = False,
) -> None:
    """Split a video into scenes: exact cut frames and times, and (with a model) a description of each scene."""
    from kvl_cli.output import err_console, print_warning, progress
    from kvl_core.backend import load_engine, resolve_backend
    from kvl_core.errors import KvlError

    from . import export
    from .decode import probe
    from .scenes import find_scenes
    from .timecode import parse_time, timecode

    fmt_name = export.format_for(out, fmt.value if fmt else None)
    t_start = parse_time(start, "--start") if start is not None else None
    t_end = parse_time(end, "--end") if end is not None else None
    remote = resolve_backend(model_backend, base_url) == "openai"
    if describe is None:
        from kvl_core.hub import configured_model_spec

        describe = mode is Mode.model or remote or configured_model_spec(model) is not None
    if mode is Mode.model and not describe:
        raise KvlError("--mode model asks the model to split the video: it cannot be combined with --no-describe")
    show = not quiet
    bars = show and err_console.is_terminal  # a progress bar on a pipe or in a log only adds noise
    engine = None
    if describe and remote:  # fail before a long scan, not after it (a server is cheap to ask)
        engine = load_engine(model, model_backend, base_url, api_key)
    elif describe:
        from kvl_core.hub import require_skill, resolve_model

        require_skill(model, "video-describe", "scene descriptions (--describe)")
        resolve_model(model)

    info = probe(file)
    first = info.first_at_or_after(t_start or 0.0)
    last = info.first_at_or_after(t_end) if t_end is not None else info.frame_count
    with progress("frame", disable=not bars, transient=True) as bar:
        task = bar.add_task(f"scanning {file.name}", total=max(last - first, 0))
        result = find_scenes(file, detector.value, threshold, min_scene_len, fades, t_start, t_end, width,
                             backend.value, not exact_decode, keyframes=num_images if images else 3,
                             on_frames=lambda n: bar.advance(task, n), info=info, compat=pysd_compat)
    scan_partial = result.partial
    if show:
        fps = result.frames_scanned / result.seconds if result.seconds > 0 else 0.0
        n = len(result.scenes)
        err_console.print(f"[dim]{n} scene{'s' * (n != 1)} in {result.frames_scanned} frames, "
                          f"{result.seconds:.1f} s ({fps:.0f} frames/s), detector {detector.value}[/dim]")
    if describe and not result.partial:
        if engine is None:
            if show:
                err_console.print("[dim]loading the model ...[/dim]")
            engine = load_engine(model, model_backend, base_url, api_key, device=device, dtype=dtype)
        _describe(result, mode, engine, frames_per_scene, max_frames,
                  {"temperature": temperature, "seed": seed, "max_new_tokens": max_new_tokens}, show)
    text = export.render(result, fmt_name)
    if out is not None:
        export.write_atomic(out, text)
    elif fmt_name == "table":
        from kvl_cli.output import console

        console.print(export.table(result))
    else:
        sys.stdout.write(text)
        sys.stdout.flush()
    if result.partial:
        if scan_partial:
            print_warning(f"interrupted: the scene list covers {timecode(result.scenes[0].start_time)}–"
                          f"{timecode(result.scenes[-1].end_time)} only")
        else:
            done = sum(s.description is not None for s in result.scenes)
            print_warning(f"interrupted while describing: {done} of {len(result.scenes)} scenes have a description")
        raise typer.Exit(130)
    if result.ended_early:
        said = info.declared_end if info.declared_end and info.declared_end > info.end_time else info.end_time
        raise KvlError(f"{file}: truncated or damaged: frames stop at {timecode(result.scenes[-1].end_time)} of "
                       f"{timecode(said)} (the scene list covers the part that could be read)")
    if result.missing > 0 and show:
        print_warning(f"{file}: {result.missing} damaged frames could not be decoded and were skipped")
    if images is not None:
        with progress("scene", disable=not bars, transient=True) as bar:
            task = bar.add_task("saving keyframes", total=len(result.scenes))
            export.save_images(result, images, num_images, on_scene=lambda s: bar.advance(task))
    if split is not None:
        from .split import split_video

        with progress("scene", disable=not bars, transient=True) as bar:
            task = bar.add_task("splitting", total=len(result.scenes))
            split_video(result, split, split_mode.value, on_scene=lambda s: bar.advance(task))


def _describe(result, mode: Mode, engine, frames_per_scene, max_frames, options: dict, show: bool) -> None:
    from kvl_cli.output import err_console, print_warning, progress

    from .describe import describe_scenes, model_scenes

    bars = show and err_console.is_terminal
    if mode is Mode.model:
        try:
            model_scenes(engine, result, max_frames=max_frames, **options)
        except KeyboardInterrupt:
            result.partial = True  # the detector's scenes are written, undescribed
            return
        if result.mode != "model":
            print_warning("the model's answer held no (HH:MM:SS - HH:MM:SS) lines; the detected scenes are kept, "
                          "undescribed")
        return
    with progress("scene", disable=not bars, transient=True) as bar:
        task = bar.add_task("describing", total=len(result.scenes))
        describe_scenes(engine, result, frames_per_scene, on_scene=lambda s: bar.advance(task), **options)
