"""Write a scenario's events as JSONL, with a progress bar on a terminal."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Iterator

import msgspec
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from liqwatch.scenarios import event_count, generate

_encode = msgspec.json.Encoder().encode


def write_events(name: str, accounts: int, seed: int, out: Path | None, events: Iterator[dict] | None = None,
                 total: int | None = None) -> int:
    """A scenario's events (`events`, default the synthetic scenario `name`) as JSONL to `out` or stdout."""
    total = event_count(accounts) if total is None else total
    show = out is not None and sys.stderr.isatty() and total > 200_000
    stream = out.open("wb") if out is not None else sys.stdout.buffer
    n = 0
    with Progress(
        TextColumn(f"writing {name}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        disable=not show,
        transient=True,
    ) as progress:
        task = progress.add_task("events", total=total)
        try:
            buf = []
            for ev in generate(name, accounts, seed) if events is None else events:
                buf.append(_encode(ev))
                n += 1
                if len(buf) == 10_000:
                    stream.write(b"\n".join(buf) + b"\n")
                    buf.clear()
                    progress.update(task, completed=n)
            if buf:
                stream.write(b"\n".join(buf) + b"\n")
        finally:
            if out is not None:
                stream.close()
            else:
                stream.flush()
    return n
