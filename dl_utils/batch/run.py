"""Run a batch: an executor over the planned sources, a ``summary.jsonl`` line per result, a table.

``summary.jsonl`` in the output folder gets one line per source as its result arrives (appended with
one ``write`` of the whole line, so a killed driver leaves whole lines); a re-run appends the new
results (skipped sources included), so the last line of a source is its current state.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

from .executors import Executor
from .options import BatchOptions
from .plan import BatchSource
from .worker import SourceResult

SUMMARY = "summary.jsonl"


def append_line(path: Path, line: str) -> None:
    """Append ``line`` and a newline with one ``os.write`` (O_APPEND): no interleaved half lines."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (line.rstrip("\n") + "\n").encode("utf-8"))
        os.fsync(fd)
    finally:
        os.close(fd)


def run_batch(sources: Sequence[BatchSource], options: BatchOptions, out_dir: str | os.PathLike[str], *,
              executor: Executor, attempts: int = 3, progress: bool = True,
              finish: Callable[[SourceResult, BatchSource], SourceResult] | None = None) -> list[SourceResult]:
    """Run every source through ``executor``; results in the order they finished. One tqdm bar counts
    sources, one the frames written across all workers. ``finish(result, source)`` runs in this
    process on each final result before it is recorded (the CVAT push of ``--cvat-project``: the
    driver's job, never a worker's)."""
    from tqdm.auto import tqdm

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    results: list[SourceResult] = []
    bar = tqdm(total=len(sources), desc="sources", unit="source", disable=not progress, position=0)
    fbar = tqdm(desc="frames", unit="frame", disable=not progress, position=1)

    by_name = {s.name: s for s in sources}

    def on_result(r: SourceResult) -> None:
        if finish is not None:
            r = finish(r, by_name[r.name])
        results.append(r)
        append_line(out / SUMMARY, r.to_json())
        bar.update(1)
        bar.set_postfix(failed=sum(x.status == "failed" for x in results), refresh=False)

    try:
        executor.run(sources, options, out, attempts=max(1, int(attempts)), on_result=on_result,
                     on_frames=fbar.update)
    finally:
        fbar.close()
        bar.close()
    return results


def format_summary(results: Sequence[SourceResult]) -> str:
    """The final table: one row per source, then the counts per status."""
    head = ("source", "status", "objects", "frames", "seconds", "try", "error")
    rows = [(r.name, r.status, str(r.objects), str(r.frames), f"{r.seconds:.1f}", str(r.attempt), r.error or "")
            for r in results]
    widths = [max(len(h), *(len(row[i]) for row in rows)) if rows else len(h) for i, h in enumerate(head)]
    fmt = "  ".join(f"{{:{w}}}" for w in widths[:-1]) + "  {}"
    lines = [fmt.format(*head), fmt.format(*("-" * w for w in widths))] + [fmt.format(*row) for row in rows]
    counts: dict[str, int] = {}
    for r in results:
        counts[r.status] = counts.get(r.status, 0) + 1
    lines.append(", ".join(f"{n} {s}" for s, n in sorted(counts.items())) or "no sources")
    return "\n".join(line.rstrip() for line in lines)


__all__ = ["SUMMARY", "append_line", "format_summary", "run_batch"]
