"""Batch input: a JSONL file of events → an Engine, rejected lines → a dead-letter file.

    engine, report = load_events(cfg, Path("events.jsonl"), deadletter=Path("rejected.jsonl"))
    report.rejected, report.by_kind            # counts, also printed on stderr by the CLI

Each rejected line is written as {"reason", "kind", "line", "original"} (or "original_base64" when the line is
not UTF-8); the run goes on.
"""

from __future__ import annotations

import base64
import json
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn, TransferSpeedColumn

from liqwatch.config import Config
from liqwatch.core.engine import Engine
from liqwatch.events import BadEvent, Event

PROGRESS_MIN_BYTES = 20_000_000  # show a progress bar for files larger than this
CHUNK = 8192  # events decoded, then applied together (runs of market events in one kernel call)


@dataclass
class LoadReport:
    lines: int = 0
    applied: int = 0
    superseded: int = 0
    rejected: int = 0
    ignored: int = 0  # ticks of books the config does not name, with ingest.unknown_sources: ignore
    after_until: int = 0
    by_kind: Counter = field(default_factory=Counter)


def load_events(
    cfg: Config,
    path: Path,
    deadletter: Path | None = None,
    engine: Engine | None = None,
    quiet: bool = False,
    until: int | None = None,
) -> tuple[Engine, LoadReport]:
    """Apply every event of `path` in file order (only those with ts <= `until`, when given)."""
    engine = engine or Engine(cfg)
    report = LoadReport()
    dead: IO[str] | None = deadletter.open("w") if deadletter is not None else None
    size = path.stat().st_size if path != Path("-") else 0
    progress = None
    if not quiet and size >= PROGRESS_MIN_BYTES and sys.stderr.isatty():
        progress = Progress(
            TextColumn("reading events"), BarColumn(), TransferSpeedColumn(), TimeRemainingColumn(), transient=True
        )
    try:
        stream = sys.stdin.buffer if path == Path("-") else path.open("rb")
        with stream as f:
            task = progress.add_task("read", total=size) if progress else None
            if progress:
                progress.start()
            chunk: list[tuple[int, bytes, Event]] = []

            def reject(lineno: int, raw: bytes, e: BadEvent) -> None:
                report.rejected += 1
                report.by_kind[e.kind] += 1
                if dead is not None:
                    rec = {"reason": e.reason, "kind": e.kind, "line": lineno}
                    try:
                        rec["original"] = raw.decode("utf-8").rstrip("\r\n")
                    except UnicodeDecodeError:  # keep the exact bytes: nothing is lost
                        rec["original_base64"] = base64.b64encode(raw.rstrip(b"\r\n")).decode()
                    dead.write(json.dumps(rec) + "\n")

            def apply_chunk() -> None:
                results = engine.apply_many([ev for _, _, ev in chunk])
                for (lineno, raw, _), res in zip(chunk, results):
                    if res is True:
                        report.applied += 1
                    elif res is False:
                        report.superseded += 1
                    else:
                        reject(lineno, raw, res)
                chunk.clear()

            for lineno, raw in enumerate(f, start=1):
                report.lines += 1
                if progress and lineno % 50_000 == 0:
                    progress.update(task, completed=f.tell())
                if not raw.strip():
                    continue
                try:
                    event = engine.gate.admit(raw)
                except BadEvent as e:
                    reject(lineno, raw, e)
                    continue
                if event is None:
                    report.ignored += 1
                    continue
                if until is not None and event.ts > until:
                    report.after_until += 1
                    continue
                chunk.append((lineno, raw, event))
                if len(chunk) == CHUNK:
                    apply_chunk()
            apply_chunk()
    finally:
        if progress:
            progress.stop()
        if dead is not None:
            dead.close()
    return engine, report
