"""``dl-utils batch``: many videos and image folders, one command, resumable (see docs/batch.md).

    dl-utils batch footage/ --text "car. person" --out stores/ [--workers 2] [--executor ray --address auto]
    dl-utils batch --manifest jobs.csv --out stores/

Every source runs through ``dl-utils annotate``'s code path (:mod:`dl_utils.batch.worker`); this
module only parses the options, plans the sources, picks the executor and prints the table. Torch-free
to import (the CLI builds its parser from it).
"""

from __future__ import annotations

import argparse
import dataclasses
import shutil
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import InputError
from .options import DetectorOptions, SamOptions, SourceOptions, TrackOptions

if TYPE_CHECKING:  # pragma: no cover
    from ..batch.executors import Executor
    from ..batch.plan import BatchSource
    from ..batch.worker import SourceResult
    from ..cvat import CvatConnection


def add_batch_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``dl-utils batch`` options: inputs or a manifest, the output folder, annotate's model and
    threshold options (the same options objects), the executor and its sizes."""
    parser.add_argument("inputs", nargs="*", metavar="INPUT",
                        help="videos, image folders, folders of them, or globs (quote globs)")
    parser.add_argument("--manifest", default=None,
                        help="CSV or JSONL, one row per source: source, text, points, out, cvat_task")
    parser.add_argument("--out", required=True, help="folder of the stores (one per source) and summary.jsonl")
    parser.add_argument("--text", default=None, help='objects to find in every source, e.g. "car. person"')
    parser.add_argument("--points-dir", default=None, dest="points_dir",
                        help="folder of PROMPTS.json files named like the sources (a/clip.mp4 -> a/clip.mp4.json "
                             "or a/clip.json)")
    SourceOptions.add_arguments(parser, command="annotate")
    SamOptions.add_arguments(parser, command="annotate")
    SamOptions.add_gpu_arguments(parser, command="annotate")
    TrackOptions.add_arguments(parser, command="annotate")
    DetectorOptions.add_arguments(parser, command="annotate")
    parser.add_argument("--executor", choices=("local", "ray"), default="local",
                        help="local: a process pool here (default); ray: Ray actors on a machine or cluster")
    parser.add_argument("--workers", type=int, default=None,
                        help="worker processes (default: one per GPU, else 1; ray: what the cluster fits)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads per worker (default: the cores divided among the workers)")
    parser.add_argument("--attempts", type=int, default=3, help="tries per source before it is reported failed")
    parser.add_argument("--address", default=None, help="ray: auto (a running cluster) or ray://HOST:PORT")
    parser.add_argument("--gpus-per-worker", type=float, default=0.0, dest="gpus_per_worker",
                        help="ray: GPU share of each worker (0.5 packs two on a GPU)")
    parser.add_argument("--cpus-per-worker", type=float, default=1.0, dest="cpus_per_worker",
                        help="ray: CPUs reserved per worker")
    parser.add_argument("--cvat-project", type=int, default=None, dest="cvat_project",
                        help="one CVAT task per source in this project, pushed as each source finishes "
                             "(credentials from CVAT_* variables; a re-run pushes only what changed)")
    parser.add_argument("--cvat-shape", choices=("mask", "polygon", "box"), default="mask", dest="cvat_shape",
                        help="--cvat-project: what each object is pushed as (default mask)")
    from .cvat import add_server_arguments

    add_server_arguments(parser)
    parser.add_argument("--verbose", action="store_true", help="print each source's result as it arrives")


def plan(args: argparse.Namespace) -> list[BatchSource]:
    """The sources of the command line (inputs or ``--manifest``, not both)."""
    from ..batch.plan import plan_from_inputs, plan_from_manifest

    if args.manifest is not None:
        if args.inputs or args.text is not None or args.points_dir is not None:
            raise InputError("--manifest gives each source its own settings: leave out INPUT, --text and "
                             "--points-dir (or drop --manifest)")
        return plan_from_manifest(args.manifest)
    if not args.inputs:
        raise InputError("nothing to annotate: give INPUT (videos, folders, globs) or --manifest FILE")
    if args.text is None and args.points_dir is None and getattr(args, "backend", None) != "onnx":
        raise InputError('nothing to annotate: give --text "car. person" and/or --points-dir FOLDER')
    return plan_from_inputs(args.inputs, text=args.text, points_dir=args.points_dir)


def with_onnx_text(sources: list[BatchSource], options: DetectorOptions) -> list[BatchSource]:
    """``--backend onnx`` without ``--text`` (or a manifest row without text): every class of the model.

    Why here, in the parent: the caption is read once from the model's metadata and written into each
    source, so every worker runs the same caption and a store's ledger (which compares captions)
    says "done" on a re-run."""
    if options.backend != "onnx" or all(s.text is not None for s in sources):
        return sources
    text = options.all_classes_caption(options.class_table())
    return [s if s.text is not None else dataclasses.replace(s, text=text) for s in sources]


def make_executor(args: argparse.Namespace) -> Executor:
    """The executor ``--executor`` names, sized by ``--workers`` / ``--threads`` (and Ray's options)."""
    for name in ("workers", "threads", "attempts"):
        v = getattr(args, name)
        if v is not None and v < 1:
            raise InputError(f"--{name} {v}: use 1 or more")
    if args.executor == "local":
        from ..batch.executors import LocalExecutor

        return LocalExecutor(args.workers, args.threads)
    try:
        from ..batch.ray_executor import RayExecutor
    except ImportError as e:
        raise InputError(f"--executor ray: the Ray executor is missing ({e}); install the ray extra: "
                         "pip install 'dl-utils[ray]'") from None
    return RayExecutor(args.address, args.workers, args.gpus_per_worker, args.cpus_per_worker, args.threads)


class CvatProject:
    """``--cvat-project``: one task per source in the project, pushed as each source finishes.

    Runs in the driver only (credentials from the ``CVAT_*`` variables never reach a worker). The
    task of a store is remembered in the store (``create_task_for_store`` records it per server), so a
    re-run finds it and pushes only what changed: nothing, when nothing did. A manifest row's
    ``cvat_task`` names an existing task instead. The store is updated on a local copy and published
    back whole, as the workers do. A CVAT error fails that source (its store is kept) and the batch goes on."""

    def __init__(self, project: int, *, shape: str = "mask", connection: CvatConnection | None = None,
                 own: bool = False) -> None:
        from ..cvat import connect

        self.project, self.shape = int(project), shape
        self.conn = connection or connect()
        self._own = connection is None or own  # closed by close()
        self.conn.request("GET", f"/api/projects/{self.project}", what=f"reading CVAT project {self.project}")

    def close(self) -> None:
        if self._own:
            self.conn.close()

    def __call__(self, r: SourceResult, src: BatchSource) -> SourceResult:
        import tempfile

        from ..batch.worker import one_line, publish
        from ..errors import DlUtilsError

        store = Path(r.store)
        if r.status == "failed" or not store.is_file():
            return r
        with tempfile.TemporaryDirectory(prefix="dl_utils-cvat-") as tmp:
            work = Path(tmp) / store.name
            shutil.copyfile(store, work)
            try:
                self._push(work, src)
            except DlUtilsError as e:
                return dataclasses.replace(r, status="failed", error=f"CVAT: {one_line(e)}")
            publish(work, store)
        return r

    def _push(self, path: Path, src: BatchSource) -> None:
        from ..cvat import push
        from ..cvat.tasks import TaskInfo, create_task_for_store
        from ..store import AnnotationStore

        with AnnotationStore.open(path) as st:
            task = src.cvat_task
            if task is None:
                known = (st.get_meta("cvat.tasks", {}) or {}).get(self.conn.host) or []
                if known:
                    task = int(known[-1])
                else:
                    info = create_task_for_store(self.conn, st, name=src.name, project_id=self.project)
                    assert isinstance(info, TaskInfo)
                    task = info.id
            push(st, self.conn, task, shape=self.shape)


def run_batch_cli(args: argparse.Namespace) -> int:
    """Run ``dl-utils batch``; prints the final table; exits 1 when a source failed."""
    from ..models import cli_warnings

    with cli_warnings(getattr(args, "debug", False)):
        return _run_batch_cli(args)


def _run_batch_cli(args: argparse.Namespace) -> int:
    from ..batch.options import BatchOptions
    from ..batch.run import SUMMARY, format_summary, run_batch

    numbering = SourceOptions.from_args(args)
    numbering.check()
    sources = plan(args)
    options = BatchOptions(detector=DetectorOptions.from_args(args),
                           sam=SamOptions.from_args(args, command="annotate"), track=TrackOptions.from_args(args),
                           numbering=numbering)
    options.track.check()
    options.sam.check_direction()
    options.detector.check_sam3()  # --text-encoder etc. with --backend sam3: refused before any worker starts
    options.sam.check_backend(options.detector.backend)  # --tracker samurai with sam3: before any worker starts
    if options.detector.backend != "sam3":  # --compile / fp16 on a CPU: said once here, not by every worker
        options.sam.say_slow_modes("batch")
    sources = with_onnx_text(sources, options.detector)  # onnx without --text: all its classes, read once here
    executor = make_executor(args)
    if args.verbose:
        print(f"{len(sources)} source(s) -> {args.out} ({args.executor} executor)", file=sys.stderr)
    cvat = None
    if args.cvat_project is not None:  # connected and checked before any work
        from .cvat import connect_from_args

        cvat = CvatProject(args.cvat_project, shape=args.cvat_shape, connection=connect_from_args(args), own=True)

    def finish(r: SourceResult, src: BatchSource) -> SourceResult:
        r = cvat(r, src) if cvat is not None else r
        if args.verbose:  # per-worker status: which worker ran what, how it ended
            print(f"{r.worker}: {r.name} {r.status} (try {r.attempt}, {r.frames} frames, {r.seconds:.1f}s)"
                  + (f": {r.error}" if r.error else ""), file=sys.stderr)
        return r

    try:
        results = run_batch(sources, options, Path(args.out), executor=executor, attempts=args.attempts,
                            progress=True, finish=finish)
    finally:
        if cvat is not None:
            cvat.close()
    print(format_summary(results))
    print(f"summary: {Path(args.out) / SUMMARY}")
    return 1 if any(r.status == "failed" for r in results) else 0


__all__ = ["CvatProject", "add_batch_arguments", "make_executor", "plan", "run_batch_cli"]
