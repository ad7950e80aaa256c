"""The `audioloop` command: gathers options, calls one function, prints the result."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from audioloop import __version__
from audioloop.config import Settings, load_settings
from audioloop.errors import AudioloopError, Interrupted
from audioloop.schedule import format_time

if TYPE_CHECKING:
    from audioloop.upscale_job import UpscaleRequest

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Render a lip-synced music video from one song, one image and a prompt schedule (LTX-2.3).",
)
err = Console(stderr=True, highlight=False, soft_wrap=True)

ConfigOpt = Annotated[
    Path | None, typer.Option("--config", "-c", help="YAML settings file (flags override it).")
]
WidthOpt = Annotated[int | None, typer.Option(help="Output width in px, a multiple of 32.")]
HeightOpt = Annotated[int | None, typer.Option(help="Output height in px, a multiple of 32.")]
FpsOpt = Annotated[float | None, typer.Option(help="Frames per second.")]
WindowOpt = Annotated[float | None, typer.Option("--window", help="Window length in seconds (≤ 20.5).")]
OverlapOpt = Annotated[float | None, typer.Option("--overlap", help="Overlap between windows in seconds.")]
StartOpt = Annotated[float | None, typer.Option("--start", help="Skip this many seconds of the song.")]
DurationOpt = Annotated[float | None, typer.Option("--duration", help="Render at most this many seconds.")]
SeedOpt = Annotated[int | None, typer.Option("--seed", help="Base seed; window i uses seed + i.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON on stdout.")]
CompileOpt = Annotated[
    bool | None,
    typer.Option(
        "--compile/--no-compile", help="torch.compile the transformer blocks (default: on for CUDA)."
    ),
]
AttentionOpt = Annotated[
    str | None,
    typer.Option(
        "--attention",
        help="Attention kernel: sdpa, cudnn, flash, efficient, fa4 (Hopper, Blackwell; audioloop[fa4]) "
        "or fa3 (Hopper; audioloop[fa3]).",
    ),
]
Fp8Opt = Annotated[
    bool | None,
    typer.Option("--fp8", help="FP8 transformer matmuls (NVIDIA Ada/Hopper; changes the numbers)."),
]
OffloadOpt = Annotated[
    bool | None,
    typer.Option("--offload", help="Stream the transformer blocks from host memory (small GPUs)."),
]
BackgroundOpt = Annotated[
    bool | None,
    typer.Option(
        "--background-decode/--no-background-decode",
        help="Decode each window while the next samples (~15 GB more GPU memory; default: on for CUDA "
        "cards of 64 GB or more, unless --offload).",
    ),
]


def _version(value: bool) -> None:
    if value:
        typer.echo(f"audioloop {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Show the version and exit.")
    ] = False,
) -> None:
    """audioloop: one song, one image and a prompt schedule in; a music video out."""


def run_or_exit(fn: Callable[[], Any]) -> Any:
    """Run a command body; a user-facing error or Ctrl-C becomes one line on stderr and its exit code."""
    try:
        return fn()
    except AudioloopError as exc:
        err.print(f"[bold red]error:[/] {exc}")
        raise typer.Exit(exc.exit_code) from None
    except KeyboardInterrupt:
        err.print("[bold red]error:[/] interrupted before anything was written")
        raise typer.Exit(Interrupted.exit_code) from None


def warn(messages: tuple[str, ...] | list[str], quiet: bool = False) -> None:
    """Warnings go to stderr so that --json output stays clean."""
    if not quiet:
        for message in messages:
            err.print(f"[yellow]warning:[/] {message}")


def _plan_table(plan: Any, prompts: Any) -> Table:
    table = Table(
        title=f"{len(plan.windows)} windows · {plan.width}×{plan.height} @ {plan.fps:g} fps · "
        f"{plan.win_px} frames ({plan.win_lat} latents) per window · stride {plan.stride_px} frames "
        f"({plan.stride_s:.2f} s) · {plan.total_frames} frames out",
    )
    for name in ("win", "song time", "keeps frames", "seed", "prompt"):
        table.add_column(name, overflow="fold")
    for window, prompt in zip(plan.windows, prompts, strict=True):
        table.add_row(
            str(window.index),
            f"{format_time(window.song_start)}–{format_time(window.song_end)}",
            f"{window.keep_start}–{window.keep_end - 1}",
            str(window.seed),
            f"[dim]#{prompt.entry}[/] {prompt.prompt}",
        )
    return table


def plan_json(result: dict[str, Any], settings: Settings) -> dict[str, Any]:
    """The `plan --json` document: song, settings, plan and each window's prompt."""
    plan = result["plan"].to_dict()
    for window, prompt in zip(plan["windows"], result["prompts"], strict=True):
        window["schedule_entry"] = prompt.entry
        window["prompt"] = prompt.prompt
    return {
        "version": __version__,
        "song": result["song"],
        "schedule": str(result["schedule"].path),
        "settings": settings.to_dict(),
        "plan": plan,
        "warnings": result["warnings"],
    }


@app.command()
def plan(
    song: Annotated[Path, typer.Argument(help="The song: any audio file PyAV can read.")],
    schedule: Annotated[Path, typer.Option("--schedule", "-s", help="The prompt schedule (YAML).")],
    config: ConfigOpt = None,
    width: WidthOpt = None,
    height: HeightOpt = None,
    fps: FpsOpt = None,
    window: WindowOpt = None,
    overlap: OverlapOpt = None,
    start: StartOpt = None,
    duration: DurationOpt = None,
    seed: SeedOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Show the window plan and each window's prompt, without rendering."""
    from audioloop.request import plan_song

    def body() -> None:
        flags = dict(width=width, height=height, fps=fps, window=window, overlap=overlap)
        flags.update(start=start, duration=duration, seed=seed)
        settings = load_settings(config, flags)
        result = plan_song(song, schedule, settings)
        warn(result["warnings"])
        if as_json:
            sys.stdout.write(json.dumps(plan_json(result, settings), indent=2) + "\n")
        else:
            Console().print(_plan_table(result["plan"], result["prompts"]))

    run_or_exit(body)


@app.command()
def render(
    song: Annotated[Path, typer.Argument(help="The song: any audio file PyAV can read.")],
    image: Annotated[Path, typer.Option("--image", "-i", help="The hero image (any Pillow-readable file).")],
    schedule: Annotated[Path, typer.Option("--schedule", "-s", help="The prompt schedule (YAML).")],
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Output .mp4/.mkv/.mov (default: SONG's stem .mp4).")
    ] = None,
    config: ConfigOpt = None,
    model: Annotated[
        str | None, typer.Option(help="diffusers-format LTX-2.3 directory, hub id, or tiny.")
    ] = None,
    width: WidthOpt = None,
    height: HeightOpt = None,
    fps: FpsOpt = None,
    window: WindowOpt = None,
    overlap: OverlapOpt = None,
    start: StartOpt = None,
    duration: DurationOpt = None,
    seed: SeedOpt = None,
    steps: Annotated[
        int | None, typer.Option(help="Sampling steps: the first sigma, then the last N of the sigma list.")
    ] = None,
    sigmas: Annotated[str | None, typer.Option(help="Sigma schedule, e.g. 1,0.725,0.421875,0.")] = None,
    nag: Annotated[
        bool | None, typer.Option("--nag/--no-nag", help="NAG against the negative prompt.")
    ] = None,
    nag_scale: Annotated[float | None, typer.Option(help="NAG strength s (3-7; 1 = off).")] = None,
    nag_alpha: Annotated[float | None, typer.Option(help="NAG blend α in [0, 1].")] = None,
    nag_tau: Annotated[float | None, typer.Option(help="NAG L1-ratio cap τ (≥ 1).")] = None,
    adain: Annotated[
        float | None, typer.Option(help="AdaIN toward window 0 after each window (0 = off).")
    ] = None,
    adain_per_frame: Annotated[
        bool | None,
        typer.Option("--adain-per-frame/--no-adain-per-frame", help="AdaIN statistics per frame."),
    ] = None,
    per_step_adain: Annotated[
        str | None, typer.Option(help="AdaIN factor per sampling step, e.g. 0.3,0.2,0.1,0.05.")
    ] = None,
    context: Annotated[
        str | None,
        typer.Option(help="Context from the previous window: latent (reuse) or pixel (re-encode)."),
    ] = None,
    crf: Annotated[int | None, typer.Option(help="Output H.264 CRF (0 lossless … 51).")] = None,
    device: Annotated[str | None, typer.Option(help="auto, cpu, cuda or cuda:N.")] = None,
    dtype: Annotated[str | None, typer.Option(help="bfloat16, float16 or float32.")] = None,
    compile: CompileOpt = None,
    attention: AttentionOpt = None,
    fp8: Fp8Opt = None,
    offload: OffloadOpt = None,
    background_decode: BackgroundOpt = None,
    work_dir: Annotated[
        Path | None, typer.Option(help="Where finished windows are kept (default: OUTPUT.work next to it).")
    ] = None,
    resume: Annotated[
        bool, typer.Option("--resume/--no-resume", help="Reuse finished windows from the work dir.")
    ] = True,
    only_windows: Annotated[
        str | None, typer.Option(help="Re-render these windows (e.g. 3,7) and every window after the first.")
    ] = None,
    sequence_parallel: Annotated[
        bool,
        typer.Option(
            "--sequence-parallel",
            help="Under torchrun: split every window over the processes (one GPU each); rank 0 writes.",
        ),
    ] = False,
    upscale: Annotated[
        bool, typer.Option("--upscale", help="Then upscale it 2× as `audioloop upscale` does by default.")
    ] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Print nothing (errors excepted).")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Render the music video: sample every window, decode and mux the song as it goes; resumable."""
    from contextlib import nullcontext
    from dataclasses import replace

    from audioloop.job import prepare, step_sigmas
    from audioloop.parallel import is_rank0, split_ranks, torchrun_job, torchrun_world
    from audioloop.progress import RenderProgress, RichProgress, silent_libraries
    from audioloop.render import render as render_job
    from audioloop.request import request_for

    def body() -> dict[str, Any] | None:
        world = split_ranks(sequence_parallel, torchrun_world())
        flags = dict(width=width, height=height, fps=fps, window=window, overlap=overlap, start=start)
        flags.update(duration=duration, seed=seed, model=model, sigmas=sigmas, nag=nag, nag_scale=nag_scale)
        flags.update(nag_alpha=nag_alpha, nag_tau=nag_tau, adain=adain, adain_per_frame=adain_per_frame)
        flags.update(per_step_adain=per_step_adain, context=context, crf=crf, device=device, dtype=dtype)
        flags.update(compile=compile, attention=attention, fp8=fp8, offload=offload)
        flags.update(background_decode=background_decode)
        settings = load_settings(config, flags)
        if steps is not None:
            settings = replace(settings, sigmas=step_sigmas(settings.sigmas, steps))
        request, warnings = request_for(
            song,
            image,
            schedule,
            settings,
            output=output,
            work_dir=work_dir,
            resume=resume,
            only_windows=only_windows,
        )
        job = prepare(request)  # on every rank, before any collective: an input error stops them all alike
        with torchrun_job(world, job.device) as rank_device:
            speaks = is_rank0()  # ranks other than 0 print nothing but errors
            silent = quiet or not speaks
            warn([*warnings, *job.warnings], silent)
            with silent_libraries() if silent else nullcontext():
                progress = RenderProgress() if silent else RichProgress(err)
                result = render_job(replace(job, device=rank_device), progress, parallel=world > 1)
        return result if speaks else None

    result = run_or_exit(body)
    if result is None:
        return
    if not (as_json or quiet):
        frames, windows = result["plan"]["total_frames"], len(result["windows"])
        err.print(
            f"wrote {result['output']} and its .json sidecar: {frames} frames, {windows} windows, "
            f"{result['timings']['total']:.1f} s"
        )
    upscaled = None
    if upscale:
        from audioloop.upscale_job import UpscaleRequest

        # On the render's device, so with its FP8 and offload (compile and attention follow its settings).
        request = UpscaleRequest(
            Path(f"{result['output']}.json"),
            fp8=result["settings"]["fp8"],
            offload=result["settings"]["offload"],
        )
        upscaled = run_or_exit(lambda: run_upscale(request, quiet))
    if as_json:
        document = result if upscaled is None else {"render": result, "upscale": upscaled}
        sys.stdout.write(json.dumps(document, indent=2) + "\n")
    elif upscaled is not None and not quiet:
        err.print(upscale_summary(upscaled))


@app.command()
def batch(
    manifest: Annotated[
        Path, typer.Argument(help="YAML or CSV: one row per song (song, image, schedule, output, settings).")
    ],
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Print failed rows only.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Render every row of a manifest, one song per process under torchrun; finished rows are skipped,
    unfinished ones resume. Exits 1 if any row failed (the others still render)."""
    from audioloop.batch import batch_exit_code, batch_json, run_batch, summary_table

    results = run_or_exit(lambda: run_batch(manifest, err, quiet))
    if results is None:  # ranks other than 0: rank 0 reports every row
        return
    if as_json:
        sys.stdout.write(json.dumps(batch_json(manifest, results), indent=2) + "\n")
    elif not quiet:
        Console().print(summary_table(results))
    raise typer.Exit(batch_exit_code(results))


def run_upscale(request: UpscaleRequest, quiet: bool) -> dict[str, Any]:
    """Prepare and run an upscale, with tile progress on stderr unless quiet; returns its sidecar."""
    from audioloop.progress import RenderProgress, RichProgress, silent_libraries
    from audioloop.upscale import upscale as upscale_job
    from audioloop.upscale_job import prepare_upscale

    job = prepare_upscale(request)
    warn(job.warnings, quiet)
    if quiet:
        with silent_libraries():
            return upscale_job(job, RenderProgress())
    return upscale_job(job, RichProgress(err, unit="tile"))


def upscale_summary(result: dict[str, Any]) -> str:
    """The one line `upscale` prints when done."""
    plan = result["plan"]
    return (
        f"wrote {result['output']} and its .json sidecar: {plan['total_frames']} frames at "
        f"{plan['width']}×{plan['height']}, {len(result['tiles'])} tiles, {result['timings']['total']:.1f} s"
    )


@app.command()
def upscale(
    source: Annotated[
        Path, typer.Argument(help="A finished render: its work dir (OUTPUT.work) or its sidecar OUTPUT.json.")
    ],
    output: Annotated[
        Path | None,
        typer.Option(
            "--output", "-o", help="Output .mp4/.mkv/.mov (default: the render's OUTPUT as STEM.2x.EXT)."
        ),
    ] = None,
    tile: Annotated[
        float | None,
        typer.Option(help="Refinement tile length in seconds (default: the longest within ~32k tokens)."),
    ] = None,
    tile_overlap: Annotated[
        float, typer.Option(help="Seconds of each tile frozen to the previous tile's end (context).")
    ] = 1.0,
    sigmas: Annotated[
        str, typer.Option(help="Refinement sigmas: seed (0.85,0.725,0.4219,0), distilled, or a list.")
    ] = "distilled",
    seed: Annotated[
        int | None, typer.Option(help="Base seed; tile t uses seed + t (default: the render's).")
    ] = None,
    model: Annotated[
        str | None,
        typer.Option(help="LTX-2.3 directory or hub id with latent_upsampler/ (default: the render's)."),
    ] = None,
    device: Annotated[
        str | None, typer.Option(help="auto, cpu, cuda or cuda:N (default: the render's).")
    ] = None,
    dtype: Annotated[
        str | None, typer.Option(help="bfloat16, float16 or float32 (default: the render's).")
    ] = None,
    compile: CompileOpt = None,
    attention: AttentionOpt = None,
    fp8: Fp8Opt = None,
    offload: OffloadOpt = None,
    background_decode: Annotated[
        bool,
        typer.Option(
            "--background-decode/--no-background-decode",
            help="Decode while the next tiles refine (off by default: beyond 60 GB at 1664×960).",
        ),
    ] = False,
    work_dir: Annotated[
        Path | None, typer.Option(help="Where finished tiles are kept (default: OUTPUT.work next to it).")
    ] = None,
    resume: Annotated[
        bool, typer.Option("--resume/--no-resume", help="Reuse finished tiles from the work dir.")
    ] = True,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Print nothing (errors excepted).")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Upscale a finished render 2× in latent space: upsample its latents, refine them in overlapping tiles
    against the song, decode and mux; resumable."""
    from audioloop.upscale_job import UpscaleRequest

    request = UpscaleRequest(
        source=source,
        output=output,
        tile=tile,
        tile_overlap=tile_overlap,
        sigmas=sigmas,
        seed=seed,
        model=model,
        device=device,
        dtype=dtype,
        work_dir=work_dir,
        resume=resume,
        compile=compile,
        attention=attention,
        fp8=bool(fp8),
        offload=bool(offload),
        background_decode=background_decode,
    )
    result = run_or_exit(lambda: run_upscale(request, quiet))
    if as_json:
        sys.stdout.write(json.dumps(result, indent=2) + "\n")
    elif not quiet:
        err.print(upscale_summary(result))
