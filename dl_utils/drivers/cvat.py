"""``dl-utils cvat labels | create-task | push | pull``: the command-line driver of :mod:`dl_utils.cvat`.

It lives in the drivers layer, not in the sink package: the sink (:mod:`dl_utils.cvat`) is a library
that knows no argparse, and command-line code belongs to the drivers or the UI (docs/architecture.md).
Wire it into the main parser with :func:`add_cvat_arguments`. Credentials never go on the command
line (shell history, process lists): the token comes from ``CVAT_ACCESS_TOKEN`` (or user name and
password from ``CVAT_USERNAME`` / ``CVAT_PASSWORD``), else a hidden prompt on a terminal.
Every command takes ``--dry-run``: it reads the server and prints what would change, changing
nothing. cvat-sdk is imported only inside the handlers, when a ``cvat`` command runs.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import InputError

if TYPE_CHECKING:  # pragma: no cover
    from ..classes import ClassTable
    from ..cvat.connection import CvatConnection
    from ..store import AnnotationStore

#: a ``cmd_cvat_*`` handler: parsed arguments in, exit status out
Handler = Callable[[argparse.Namespace], int]


def _print(obj: object, as_json: bool) -> None:
    if as_json:
        print(json.dumps(obj, indent=2, default=str))


def add_server_arguments(p: argparse.ArgumentParser) -> None:
    """The server options every command that talks to CVAT shares (``dl-utils cvat ...``, ``batch
    --cvat-project``): one definition, so ``--retries`` means the same everywhere."""
    g = p.add_argument_group("server (token from CVAT_ACCESS_TOKEN, never an option)")
    g.add_argument("--host", help="CVAT address, e.g. https://app.cvat.ai (default: $CVAT_HOST)")
    g.add_argument("--org", help="organisation slug (default: $CVAT_ORG; '' = personal workspace)")
    g.add_argument("--user", help="log in with this user name and $CVAT_PASSWORD (or a prompt)"
                   " instead of a token")
    g.add_argument("--retries", type=int, default=5, help="retries per request (default 5)")
    g.add_argument("--no-prompt", action="store_true", help="never ask for a secret; fail instead")


def _common(p: argparse.ArgumentParser) -> None:
    add_server_arguments(p)
    p.add_argument("--dry-run", action="store_true", help="print what would change; change nothing")
    p.add_argument("--json", action="store_true", help="print the result as JSON")


def connect_from_args(args: argparse.Namespace) -> CvatConnection:
    """The connection :func:`add_server_arguments`' options describe."""
    from ..cvat.connection import RetryPolicy, connect

    if args.retries < 0:
        raise InputError(f"--retries {args.retries}: use 0 or more")
    return connect(args.host, user=args.user, org=args.org,
                   retry=RetryPolicy(retries=args.retries),
                   prompt=False if args.no_prompt else None)


def _open_store(path: str, *, must_exist: bool = True, readonly: bool = False) -> AnnotationStore:
    """``readonly`` where the command only reads the store (label sync, every --dry-run): a store
    on a read-only disk or share can then be checked against the server."""
    from ..store import AnnotationStore

    if must_exist and not Path(path).exists():
        raise InputError(f"annotation store {path} does not exist; check the path")
    return AnnotationStore.open(path, readonly=readonly)


# ------------------------------------------------------------------------------------ handlers
def cmd_cvat_labels(args: argparse.Namespace) -> int:
    """Sync a class table's (or a store's) labels to a task or project."""
    from ..cvat.labels import sync_labels

    if (args.store is None) == (args.classes is None):
        raise InputError("give exactly one of --store STORE or --classes TABLE")
    if args.classes is not None:
        from ..classes import ClassTable

        source: ClassTable | AnnotationStore = ClassTable.load(args.classes)
    else:
        source = _open_store(args.store, readonly=True)
    with connect_from_args(args) as conn:
        res = sync_labels(conn, source, task_id=args.task, project_id=args.project,
                          label_type=args.type, dry_run=args.dry_run)
    if args.json:
        _print(res.summary(), True)
    else:
        verb = "would create" if args.dry_run else "created"
        print(f"{res.target}: {verb} {len(res.created)} label(s) {res.created}, {len(res.existing)}"
              " already there")
        for c in res.color_differs:
            print(f"  colour differs: {c}")
        for c in res.conflicts:
            print(f"  CONFLICT: {c}")
    if res.conflicts:
        res.check()
    return 0


def cmd_cvat_create_task(args: argparse.Namespace) -> int:
    """Create a task from the store's media (or --files) with the store's frame numbering."""
    from ..cvat.tasks import TaskInfo, create_task_for_store

    store = _open_store(args.store, readonly=args.dry_run)
    with store, connect_from_args(args) as conn:
        res = create_task_for_store(
            conn, store, name=args.name, files=args.files, project_id=args.project,
            resource=args.resource, cloud_storage_id=args.cloud_storage,
            segment_size=args.segment_size, overlap=args.overlap, image_quality=args.quality,
            dry_run=args.dry_run,
        )
    if isinstance(res, TaskInfo):
        out = {"task": res.id, "name": res.name, "frames": res.size, "start": res.media.start,
               "step": res.media.step, "jobs": [j.id for j in res.jobs]}
        if args.json:
            _print(out, True)
        else:
            print(f"created task {res.id} ({res.name!r}): {res.size} frames, start {res.media.start},"
                  f" step {res.media.step}, jobs {[j.id for j in res.jobs]}")
    else:
        if args.json:
            _print(res, True)
        else:
            d = res["data"]
            print(f"would create task {res['task']['name']!r} from {res['files']} file(s)"
                  f" ({res['resource']}, first {res['first_file']}), start {d.get('start_frame')},"
                  f" stop {d.get('stop_frame')}, step {d.get('frame_step', 1)}")
    return 0


def cmd_cvat_push(args: argparse.Namespace) -> int:
    """Push the store's instances to a task (create / update / delete only what changed)."""
    from ..cvat.push import push

    objects = None
    if args.objects:
        try:
            objects = [int(v) for v in args.objects.split(",") if v.strip()]
        except ValueError:
            raise InputError(f"--objects {args.objects!r}: give ids separated by commas, e.g. 1,2,5") from None
    if args.max_request_mb <= 0:
        raise InputError(f"--max-request-mb {args.max_request_mb}: use a positive size")
    store = _open_store(args.store, readonly=args.dry_run)
    with store, connect_from_args(args) as conn:
        rep = push(store, conn, args.task, shape=args.shape,
                   tracks=False if args.shapes_only else None, objects=objects,
                   max_request_bytes=int(args.max_request_mb * 1024 * 1024),
                   verify=not args.no_verify, create_labels=not args.no_create_labels,
                   dry_run=args.dry_run)
    if args.json:
        _print(rep.summary(), True)
    else:
        print(rep)
        if rep.held:
            print(f"  {len(rep.held)} shape(s) edited or deleted in CVAT were left alone; run"
                  " `dl-utils cvat pull` to bring them into the store")
    return 0


def cmd_cvat_pull(args: argparse.Namespace) -> int:
    """Read the task's annotations (all jobs) into the store; creates the store if needed."""
    from ..store import AnnotationStore
    from ..cvat.pull import pull

    path = Path(args.store)
    created = not path.exists()
    if created and args.dry_run:
        import tempfile

        tmp = tempfile.TemporaryDirectory()
        store = AnnotationStore.create(Path(tmp.name) / "dry.sqlite")
    else:
        store = (AnnotationStore.create(path) if created
                 else AnnotationStore.open(path, readonly=args.dry_run))
    try:
        with store, connect_from_args(args) as conn:
            rep = pull(store, conn, args.task, rasterize=not args.no_rasterize,
                       include_own=args.include_own, dry_run=args.dry_run)
    except BaseException:
        if created and not args.dry_run:
            for suffix in ("", "-wal", "-shm"):
                Path(str(path) + suffix).unlink(missing_ok=True)
        raise
    if args.json:
        _print(rep.summary(), True)
    else:
        print(rep)
    return 0


def _scrubbed(fn: Handler) -> Handler:
    """Run a handler so that no exception leaving it can carry a token or password."""
    import functools

    @functools.wraps(fn)
    def run(args: argparse.Namespace) -> int:
        from ..cvat.connection import scrub_exception

        try:
            return fn(args)
        except BaseException as e:
            scrub_exception(e)
            raise

    return run


# ------------------------------------------------------------------------------------ parser
def add_cvat_arguments(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> argparse.ArgumentParser:
    """Add ``cvat`` with ``labels | create-task | push | pull`` (and the project and transfer commands of
    ``drivers.cvat_projects`` / ``drivers.cvat_transfer``) to the main parser's subparsers."""
    cvat = subparsers.add_parser(
        "cvat", help="CVAT server: labels, tasks, push and pull annotations, projects, balance, exports and backups")
    sub = cvat.add_subparsers(dest="cvat_command", metavar="SUBCOMMAND", required=True)

    lb = sub.add_parser("labels", help="create missing labels in a task/project; report conflicts")
    tg = lb.add_mutually_exclusive_group(required=True)
    tg.add_argument("--task", type=int, help="task id (a task in a project syncs the project)")
    tg.add_argument("--project", type=int, help="project id")
    lb.add_argument("--store", help="take the labels from this annotation store")
    lb.add_argument("--classes", help="take the labels from this class table (.csv / .xlsx)")
    lb.add_argument("--type", choices=("any", "mask", "polygon", "rectangle"),
                    help="type of the labels created (default: each class's own, usually 'any')")
    _common(lb)
    lb.set_defaults(func=_scrubbed(cmd_cvat_labels))

    ct = sub.add_parser("create-task", help="create a task from the store's video/images with its numbering")
    ct.add_argument("store", help="annotation store whose media (file, start, stop, step) to use")
    ct.add_argument("--name", help="task name (default: the media name)")
    ct.add_argument("--files", nargs="+", help="files to use instead of the store's media path")
    ct.add_argument("--project", type=int, help="create the task in this project (its labels)")
    ct.add_argument("--resource", default="local", choices=("local", "share", "cloud", "remote"),
                    help="local upload (default), files on the server share, in cloud storage, or URLs")
    ct.add_argument("--cloud-storage", type=int, help="cloud storage id (with --resource cloud)")
    ct.add_argument("--segment-size", type=int, help="frames per job")
    ct.add_argument("--overlap", type=int, help="frames shared by consecutive jobs")
    ct.add_argument("--quality", type=int, default=95, help="image quality of the task's chunks")
    _common(ct)
    ct.set_defaults(func=_scrubbed(cmd_cvat_create_task))

    ps = sub.add_parser("push", help="push the store to a task: only what changed since the last push")
    ps.add_argument("store")
    ps.add_argument("--task", type=int, required=True, help="task id")
    ps.add_argument("--shape", default="mask", choices=("mask", "polygon", "box"),
                    help="mask (exact, default), polygon or box")
    ps.add_argument("--shapes-only", action="store_true",
                    help="polygons/boxes as per-frame shapes, not tracks (default on image tasks)")
    ps.add_argument("--objects", help="push only these object ids, e.g. 1,2,5")
    ps.add_argument("--max-request-mb", type=float, default=8.0, help="largest request body (8 MB)")
    ps.add_argument("--no-verify", action="store_true",
                    help="do not read the task first (faster; shapes edited in CVAT may be overwritten)")
    ps.add_argument("--no-create-labels", action="store_true", help="fail on a missing label")
    _common(ps)
    ps.set_defaults(func=_scrubbed(cmd_cvat_push))

    pl = sub.add_parser("pull", help="read the task's annotations (people's corrections) into the store")
    pl.add_argument("store", help="annotation store (created from the task when it does not exist)")
    pl.add_argument("--task", type=int, required=True, help="task id")
    pl.add_argument("--no-rasterize", action="store_true", help="keep polygons and boxes without masks")
    pl.add_argument("--include-own", action="store_true",
                    help="also rewrite instances this store pushed and nobody changed")
    _common(pl)
    pl.set_defaults(func=_scrubbed(cmd_cvat_pull))

    from .cvat_projects import add_project_commands
    from .cvat_transfer import add_transfer_commands

    add_project_commands(sub)
    add_transfer_commands(sub)
    return cvat


__all__ = ["add_cvat_arguments", "cmd_cvat_create_task", "cmd_cvat_labels", "cmd_cvat_pull",
           "cmd_cvat_push"]
