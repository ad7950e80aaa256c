"""`audioloop batch MANIFEST`: render every row of a manifest, one song per process, skipping finished rows
and resuming unfinished ones; a failing row is reported and the others still render.

The manifest is YAML (a list of rows, or `{defaults: {...}, rows: [...]}` whose defaults every row inherits)
or CSV (a header naming the columns, one row per line). Every row needs song, image, schedule and output; it
may add `config` (a settings file, as `render --config`) and any setting (seed, sigmas, width, ...), which
override the config's. Defaults may hold image, schedule, config and settings. Relative paths resolve against
the manifest's folder. The whole manifest is checked before anything renders, and one model (model, dtype,
device) serves every row: it is loaded once per process.

Under `torchrun --nproc-per-node N -m audioloop batch MANIFEST`, rank r renders the rows i (counted from 0 in
manifest order) with i % N == r, on GPU LOCAL_RANK; a single process renders every row in order. Each process
checks its rows first, encodes all their prompts in one Gemma pass, then renders them one after another with
the same components (so Gemma and the transformer are never resident together). Rank 0 gathers every row's
result over gloo (ranks finish hours apart) and prints the summary.

A row is finished, and skipped, when its output and sidecar exist and the sidecar records the settings, window
fingerprints and input hashes the row would render now; otherwise its render resumes from the work dir's valid
windows (resumable) or starts at window 0 (to do). Exit code: 0 when every row rendered or was skipped, 1 when
any row failed (each row's own code is in the summary), 2 when the manifest is invalid (nothing rendered).
"""

from __future__ import annotations

import csv
import difflib
import io
import json
import os
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass, fields
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import yaml
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from audioloop.config import SPEED_ONLY, Settings, load_settings, setting_values
from audioloop.errors import AudioloopError, Interrupted, SettingsError
from audioloop.job import DTYPES, Job, prepare, resolve_device
from audioloop.models.load import Components, load_components
from audioloop.models.text import encode_prompts
from audioloop.parallel import init_distributed, torchrun_world
from audioloop.progress import RenderProgress, RichProgress, silent_libraries
from audioloop.render import finished, home, job_prompts, render
from audioloop.request import RenderRequest, request_for
from audioloop.sidecar import sidecar
from audioloop.workdir import cache_dir

PATHS = ("song", "image", "schedule", "output")  # every row needs these
SHARED_PATHS = ("image", "schedule")  # the paths defaults may give
CONFIG = "config"
SETTING_DEFAULTS = {f.name: f.default for f in fields(Settings)}
# One model loads per process, and its transformer is accelerated once: rows must agree on all of these.
ONE_MODEL = ("model", "dtype", "device", "compile", "attention", "fp8", "offload")
SUFFIXES = (".yaml", ".yml", ".csv")
FINISHED, RESUMABLE, TO_DO = "finished", "resumable", "to do"
RENDERED, SKIPPED, FAILED = "rendered", "skipped", "failed"
GATHER_TIMEOUT = timedelta(days=7)  # rank 0 waits at the gather for the slowest rank's last row


@dataclass(frozen=True)
class Row:
    """One checked manifest row: paths resolved against the manifest's folder, settings resolved."""

    number: int  # from 1 in manifest order; a CSV's header is not counted
    song: Path
    image: Path
    schedule: Path
    output: Path
    settings: Settings


@dataclass(frozen=True)
class RowResult:
    """How a row went: rendered, skipped (finished before) or failed (its error line and exit code)."""

    row: int
    song: str
    output: str
    status: str
    seconds: float
    error: str | None = None
    exit_code: int = 0
    resumed_from: int | None = None  # a rendered row's first sampled window (0: from scratch)
    rank: int = 0


# --- the manifest ------------------------------------------------------------------------------------------


def read_manifest(path: Path) -> tuple[Any, Any]:
    """A manifest's defaults and raw rows, from YAML or CSV (chosen by suffix), not yet checked."""
    if not path.is_file():
        raise SettingsError(f"{path}: manifest not found; pass a YAML or CSV file")
    if path.suffix.lower() not in SUFFIXES:
        raise SettingsError(f"{path}: unsupported manifest type {path.suffix!r}; use .yaml, .yml or .csv")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise SettingsError(f"{path}: cannot read the manifest ({exc})") from None
    return csv_manifest(path, text) if path.suffix.lower() == ".csv" else yaml_manifest(path, text)


def yaml_manifest(path: Path, text: str) -> tuple[Any, Any]:
    """A YAML manifest's defaults and rows: a list of rows, or a mapping of rows and optional defaults."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise SettingsError(f"{path}: not valid YAML{where}; fix the syntax") from None
    defaults, rows = {}, data
    if isinstance(data, dict) and "rows" in data and set(data) <= {"defaults", "rows"}:
        defaults, rows = data.get("defaults") or {}, data["rows"]
    if not isinstance(rows, list):
        raise SettingsError(f"{path}: expected a list of rows, or a mapping of rows and defaults")
    return defaults, rows


def csv_manifest(path: Path, text: str) -> tuple[Any, Any]:
    """A CSV manifest's rows (no defaults): the header names the columns; empty cells stay unset."""
    reader = csv.DictReader(io.StringIO(text))
    header = [name.strip() for name in reader.fieldnames or []]
    missing = [name for name in PATHS if name not in header]
    if missing:
        raise SettingsError(
            f"{path}: no {', '.join(missing)} column; the header names song, image, schedule, output "
            "and any settings"
        )
    rows = []
    for number, record in enumerate(reader, start=1):
        if None in record:
            raise SettingsError(f"{path}: row {number}: more cells than the header has columns")
        cells = {name.strip(): cell for name, cell in record.items() if cell is not None and cell.strip()}
        rows.append({name: csv_value(name, cell) for name, cell in cells.items()})
    return {}, rows


def csv_value(name: str, cell: str) -> Any:
    """A CSV cell as the field's value: paths and text settings as written, other settings read as YAML
    scalars (5, 0.3, true), so a CSV row means what the same YAML row does."""
    cell = cell.strip()
    if name in (*PATHS, CONFIG) or isinstance(SETTING_DEFAULTS.get(name), str):
        return cell
    try:
        return yaml.safe_load(cell)
    except yaml.YAMLError:
        return cell


def manifest_fields(where: str, raw: Any, paths: Sequence[str]) -> tuple[dict[str, str], dict[str, Any]]:
    """A row's (or the defaults') path fields as written and its checked settings; `paths` are the path
    fields allowed besides config, and every message starts with `where`."""
    if not isinstance(raw, dict):
        raise SettingsError(f"{where}: expected a mapping of field: value, got {raw!r}")
    given = {str(key).replace("-", "_"): value for key, value in raw.items()}
    known = (*paths, CONFIG, *SETTING_DEFAULTS)
    for name in given:
        if name in PATHS and name not in paths:
            raise SettingsError(f"{where}: {name} differs from row to row; give it in each row")
        if name not in known:
            close = difflib.get_close_matches(name, known, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise SettingsError(f"{where}: unknown field {name!r}{hint}")
    path_fields = {name: value for name, value in given.items() if name in (*paths, CONFIG)}
    for name, value in path_fields.items():
        if not isinstance(value, str) or not value.strip():
            raise SettingsError(f"{where}: {name} must be a path, got {value!r}")
    try:
        settings = setting_values({k: v for k, v in given.items() if k in SETTING_DEFAULTS}, where)
    except AudioloopError as exc:
        raise SettingsError(str(exc)) from None
    return path_fields, settings


def parse_row(manifest: Path, number: int, raw: Any, defaults: tuple[dict[str, str], dict[str, Any]]) -> Row:
    """Row `number` checked and resolved; its settings are the config file's < the defaults' < its own."""
    where = f"{manifest}: row {number}"
    own_paths, own_settings = manifest_fields(where, raw, PATHS)
    given = {**defaults[0], **own_paths}
    missing = [name for name in PATHS if name not in given]
    if missing:
        raise SettingsError(f"{where}: no {missing[0]}; every row needs song, image, schedule and output")
    paths = {name: manifest.parent / Path(value).expanduser() for name, value in given.items()}
    config = paths.get(CONFIG)
    if config is not None and not config.is_file():
        raise SettingsError(f"{where}: config {config} not found")
    try:
        settings = load_settings(config, {**defaults[1], **own_settings})
    except AudioloopError as exc:
        raise SettingsError(f"{where}: {exc}") from None
    return Row(number, paths["song"], paths["image"], paths["schedule"], paths["output"], settings)


def check_rows(manifest: Path, rows: Sequence[Row]) -> None:
    """Refuse two rows with one output, and rows needing another model than row 1 (one loads per process)."""
    outputs: dict[Path, int] = {}
    for row in rows:
        first = outputs.setdefault(row.output.resolve(), row.number)
        if first != row.number:
            raise SettingsError(
                f"{manifest}: row {row.number}: output {row.output} is also row {first}'s; "
                "give every row its own output"
            )
        for name in ONE_MODEL:
            mine, theirs = getattr(row.settings, name), getattr(rows[0].settings, name)
            if mine != theirs:
                raise SettingsError(
                    f"{manifest}: row {row.number}: {name} {mine!r} differs from row {rows[0].number}'s "
                    f"{theirs!r}; a batch renders every row with one model, dtype and device (and one "
                    "compile, attention, fp8 and offload)"
                )


def load_manifest(path: Path) -> tuple[Row, ...]:
    """Every row of a manifest, checked before anything renders; errors name the manifest, row and field."""
    defaults, raw_rows = read_manifest(path)
    if not raw_rows:
        raise SettingsError(f"{path}: no rows; list at least one row of song, image, schedule and output")
    shared = manifest_fields(f"{path}: defaults", defaults, SHARED_PATHS)
    rows = tuple(parse_row(path, number, raw, shared) for number, raw in enumerate(raw_rows, start=1))
    check_rows(path, rows)
    return rows


# --- rows, ranks and results -------------------------------------------------------------------------------


def rows_for_rank(count: int, world: int, rank: int) -> list[int]:
    """The rows (indices from 0, in manifest order) that rank `rank` of `world` renders: i % world == rank."""
    return list(range(rank, count, world))


def _identity(document: Mapping[str, Any]) -> Any:
    """What a finished render's sidecar must match: settings, window fingerprints, inputs' sha256."""
    try:
        return (
            {k: v for k, v in document["settings"].items() if k not in SPEED_ONLY},
            [window["fingerprint"] for window in document["windows"]],
            {name: entry["sha256"] for name, entry in document["inputs"].items()},
        )
    except (KeyError, TypeError, AttributeError):
        return None


def row_status(recorded: Mapping[str, Any] | None, expected: Mapping[str, Any], start: int) -> str:
    """finished when the recorded sidecar matches the one the row would write now (settings, window
    fingerprints, input hashes); else resumable when the work dir holds valid windows (start > 0), else to
    do."""
    identity = None if recorded is None else _identity(recorded)
    if identity is not None and identity == _identity(expected):
        return FINISHED
    return RESUMABLE if start > 0 else TO_DO


def batch_exit_code(results: Sequence[RowResult]) -> int:
    """0 when every row rendered or was skipped, 1 when any row failed (whatever its own exit code)."""
    return 1 if any(result.status == FAILED for result in results) else 0


def batch_json(manifest: Path, results: Sequence[RowResult]) -> dict[str, Any]:
    """The `batch --json` document: the manifest, the batch's exit code and every row's result."""
    rows = [asdict(result) for result in results]
    return {"manifest": str(manifest), "exit_code": batch_exit_code(results), "rows": rows}


def summary_table(results: Sequence[RowResult]) -> Table:
    """The end-of-batch table: one line per row, a failed row with its error."""
    counts = {status: sum(r.status == status for r in results) for status in (RENDERED, SKIPPED, FAILED)}
    table = Table(title=f"{len(results)} rows: " + ", ".join(f"{n} {status}" for status, n in counts.items()))
    for name in ("row", "song", "status", "seconds", "output / error"):
        table.add_column(name, overflow="fold")
    for r in results:
        status = f"[bold red]{r.status}[/] ({r.exit_code})" if r.status == FAILED else r.status
        table.add_row(str(r.row), escape(r.song), status, f"{r.seconds:.1f}", escape(r.error or r.output))
    return table


# --- running -----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Voice:
    """Where a process's row lines go: stderr, prefixed with the rank under torchrun; quiet keeps errors."""

    console: Console
    quiet: bool
    prefix: str

    def note(self, text: str) -> None:
        """A progress line, unless quiet."""
        if not self.quiet:
            self.console.print(f"{self.prefix}{escape(text)}")

    def error(self, text: str) -> None:
        """An error line, always."""
        self.console.print(f"{self.prefix}[bold red]error:[/] {escape(text)}")


def run_batch(path: Path, console: Console, quiet: bool = False) -> list[RowResult] | None:
    """Render this process's rows of a manifest; rank 0 (or the only process) returns every row's result in
    row order, the other ranks None. Ctrl-C stops the batch: rows finished so far are kept."""
    rows = load_manifest(path)  # on every rank, before any collective: a bad manifest stops them all alike
    world = torchrun_world()
    try:
        with _batch_job(world) as rank, silent_libraries() if quiet else nullcontext():
            voice = _Voice(console, quiet, f"rank {rank}: " if world > 1 else "")
            mine = [rows[i] for i in rows_for_rank(len(rows), world, rank)]
            results = _gather(_run_rows(mine, voice, rank, bars=world == 1 and not quiet), world)
    except (KeyboardInterrupt, Interrupted):
        raise Interrupted(
            "interrupted: finished rows are kept, and the current row's finished windows in its work dir; "
            "run the same batch again to resume"
        ) from None
    return results if rank == 0 else None


@contextmanager
def _batch_job(world: int) -> Iterator[int]:
    """This process's rank. Under torchrun it joins a gloo group for the final gather (ranks finish hours
    apart, past NCCL's watchdog) and renders on GPU LOCAL_RANK; alone it is rank 0. The group is left after
    a clean end."""
    if world == 1:
        yield 0
        return
    init_distributed("gloo", timeout=GATHER_TIMEOUT)
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    yield dist.get_rank()
    dist.destroy_process_group()


def _gather(results: list[RowResult], world: int) -> list[RowResult]:
    """Every rank's results, on every rank, in row order."""
    parts: list[Any] = [results]
    if world > 1:
        parts = [None] * world
        dist.all_gather_object(parts, results)
    return sorted((result for part in parts for result in part), key=lambda result: result.row)


def _run_rows(rows: Sequence[Row], voice: _Voice, rank: int, bars: bool) -> list[RowResult]:
    """Check every row (skipping the finished), encode the prompts of the rest in one pass, then render them
    with one model load; a failure is that row's result (all pending rows' if the model or prompts fail)."""
    results: list[RowResult] = []
    pending: list[tuple[Row, RenderRequest]] = []
    prompts: set[str] = set()
    for row in rows:
        began = time.perf_counter()
        try:
            request, warnings = _request(row)
            job = prepare(request)
        except Exception as exc:
            results.append(_failed(row, exc, began, rank, voice))
            continue
        for warning in (*warnings, *job.warnings):
            voice.note(f"warning: row {row.number}: {warning}")
        if row_status(_recorded(job), _expected(job), job.start) == FINISHED:
            voice.note(f"row {row.number} ({row.song}): {job.output} is finished; skipped")
            results.append(_result(row, SKIPPED, began, rank))
            _drop_if_empty(job.work.path)
            continue
        pending.append((row, request))
        prompts.update(job_prompts(job))
    if not pending:
        return results
    began = time.perf_counter()
    try:
        components = _load(pending[0][0].settings)
        voice.note(f"encoding {len(prompts)} prompts")
        encode_prompts(components, sorted(prompts), cache_dir() / "text")
    except Exception as exc:
        return results + [_failed(row, exc, began, rank, voice) for row, _ in pending]
    for row, request in pending:
        results.append(_render_row(row, request, components, voice, rank, bars))
    return results


def _request(row: Row) -> tuple[RenderRequest, list[str]]:
    """A row's render request as `audioloop render` builds it (image checked, song planned), and warnings."""
    return request_for(
        row.song,
        row.image,
        row.schedule,
        row.settings,
        image_fix="fix the row's image path",
        output=row.output,
    )


def _recorded(job: Job) -> dict[str, Any] | None:
    """The sidecar of an earlier render of the job's output, when the output and a readable sidecar exist."""
    if not (job.output.is_file() and job.sidecar.is_file()):
        return None
    try:
        return json.loads(job.sidecar.read_text())
    except (OSError, ValueError):
        return None


def _expected(job: Job) -> dict[str, Any]:
    """The sidecar a render of the job would write, as JSON reads it back (timings aside)."""
    return json.loads(json.dumps(sidecar(job, {}, 0)))


def _drop_if_empty(work: Path) -> None:
    """Remove a work dir that checking a finished row created empty (its files had been cleaned up)."""
    if work.is_dir() and not any(work.iterdir()):
        work.rmdir()


def _load(settings: Settings) -> Components:
    """The batch's one model, on this process's device (cuda is this rank's GPU under torchrun)."""
    return load_components(
        settings.model,
        device=resolve_device(settings.device),
        dtype=DTYPES[settings.dtype],
        transformer_device=home(settings),
    )


def _render_row(
    row: Row, request: RenderRequest, components: Components, voice: _Voice, rank: int, bars: bool
) -> RowResult:
    """Render one row (prepared again, so only one song's audio is held at a time) with the loaded model."""
    began = time.perf_counter()
    try:
        job = prepare(request)
        reused = f"; {finished(job.start)} in its work dir" if job.start else ""
        voice.note(f"row {row.number} ({row.song}): rendering {job.output}{reused}")
        render(job, RichProgress(voice.console) if bars else RenderProgress(), components=components)
    except Interrupted:
        raise
    except Exception as exc:
        return _failed(row, exc, began, rank, voice)
    result = _result(row, RENDERED, began, rank, resumed_from=job.start)
    voice.note(f"row {row.number} ({row.song}): rendered {job.output} in {result.seconds:.1f} s")
    return result


def _result(row: Row, status: str, began: float, rank: int, **details: Any) -> RowResult:
    """A row's result, timed from `began`."""
    seconds = time.perf_counter() - began
    return RowResult(row.number, str(row.song), str(row.output), status, seconds, rank=rank, **details)


def _failed(row: Row, exc: Exception, began: float, rank: int, voice: _Voice) -> RowResult:
    """A failed row's result, reported: its one-line error and exit code (1 for an unexpected exception)."""
    if isinstance(exc, AudioloopError):
        error, code = str(exc), exc.exit_code
    else:
        error, code = f"{type(exc).__name__}: {next(iter(str(exc).splitlines()), '')}", 1
    voice.error(f"row {row.number}: {error}")
    return _result(row, FAILED, began, rank, error=error, exit_code=code)
