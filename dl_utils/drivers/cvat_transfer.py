"""``dl-utils cvat export-dataset | backup | restore``: files the CVAT server makes, moved safely.

The library code is :mod:`dl_utils.cvat.transfer`; this module only parses options and prints.
Server options, ``--json`` and ``--dry-run`` are the ones every ``dl-utils cvat`` command shares
(:mod:`dl_utils.drivers.cvat`). ``--dry-run`` reads the server (formats, tasks, projects) and checks
the local files, and starts no export, backup or upload.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import InputError


def _options(args: argparse.Namespace):  # -> TransferOptions
    from ..cvat.transfer import TransferOptions

    if args.poll <= 0:
        raise InputError(f"--poll {args.poll}: give a positive number of seconds")
    return TransferOptions(poll_interval=args.poll, progress=not args.json)


def cmd_cvat_export_dataset(args: argparse.Namespace) -> int:
    """Have the server export a project or task in one of its formats; download it to --out."""
    from ..cvat.transfer import check_format, export_dataset, list_formats
    from .cvat import _print, connect_from_args

    if args.list_formats:
        with connect_from_args(args) as conn:
            formats = list_formats(conn)
        if args.json:
            _print([f.__dict__ for f in formats], True)
        else:
            for f in formats:
                print(f"{f.name}{'' if f.enabled else '  (disabled)'}")
        return 0
    if (args.project is None) == (args.task is None):
        raise InputError("give exactly one of --project ID or --task ID (or --list-formats)")
    if not args.format or not args.out:
        raise InputError("give --format NAME (see --list-formats) and --out FILE")
    kind, oid = ("project", args.project) if args.project is not None else ("task", args.task)
    with connect_from_args(args) as conn:
        if args.dry_run:
            fmt = check_format(conn, args.format)
            obj = conn.request("GET", f"/api/{kind}s/{oid}", what=f"{kind} {oid}") or {}
            plan = {"kind": kind, "id": oid, "name": obj.get("name"), "format": fmt.name,
                    "with_images": args.with_images, "out": args.out, "dry_run": True}
            if args.json:
                _print(plan, True)
            else:
                print(f"would export {kind} {oid} ({obj.get('name')!r}) as {fmt.name!r}"
                      f"{' with images' if args.with_images else ''} to {args.out}")
            return 0
        path = export_dataset(conn, project=args.project, task=args.task, format=args.format,
                              out=Path(args.out), with_images=args.with_images, options=_options(args))
    size = path.stat().st_size
    if args.json:
        _print({"kind": kind, "id": oid, "format": args.format, "out": str(path), "bytes": size}, True)
    else:
        print(f"exported {kind} {oid} as {args.format!r} to {path} ({size} bytes)")
    return 0


def cmd_cvat_backup(args: argparse.Namespace) -> int:
    """Back up tasks, one zip each; those already backed up (complete zip there) are skipped."""
    from ..cvat.transfer import backup_tasks
    from .cvat import _print, connect_from_args

    with connect_from_args(args) as conn:
        rep = backup_tasks(conn, args.task, Path(args.out), force=args.force, dry_run=args.dry_run,
                           options=_options(args))
    if args.json:
        _print({**rep.summary(), "dry_run": args.dry_run}, True)
    elif args.dry_run:
        for t, p in sorted(rep.written.items()):
            print(f"would back up task {t} to {p}")
        for t, p in sorted(rep.skipped.items()):
            print(f"task {t}: {p} is there already (--force to back it up again)")
    else:
        print(rep)
    return 0


def cmd_cvat_restore(args: argparse.Namespace) -> int:
    """Create a new task from each backup zip (optionally in a project); print the new ids."""
    from ..cvat.transfer import restore_tasks
    from .cvat import _print, connect_from_args

    with connect_from_args(args) as conn:
        res = restore_tasks(conn, [Path(f) for f in args.files], project_id=args.project,
                            dry_run=args.dry_run, options=_options(args))
    if args.json:
        _print({"tasks": res, "project": args.project, "dry_run": args.dry_run}, True)
    else:
        where = f" in project {args.project}" if args.project is not None else ""
        for f, tid in res.items():
            print(f"would restore {f}{where}" if args.dry_run else f"restored {f} as task {tid}{where}")
    return 0


def add_transfer_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the server-side export and backup commands to ``dl-utils cvat``'s subparsers."""
    from .cvat import _common, _scrubbed

    ex = sub.add_parser("export-dataset", help="have the server export a project or task (COCO 1.0, ...)"
                        " and download it")
    g = ex.add_mutually_exclusive_group()
    g.add_argument("--project", type=int, help="project id")
    g.add_argument("--task", type=int, help="task id")
    ex.add_argument("--format", help='a format of the server, exactly as listed, e.g. "COCO 1.0"')
    ex.add_argument("--out", help="the file to write (written through a .part file, then renamed)")
    ex.add_argument("--with-images", action="store_true", help="include the images (save_images)")
    ex.add_argument("--list-formats", action="store_true", help="print the server's export formats")
    ex.add_argument("--poll", type=float, default=2.0, help="seconds between status checks (2)")
    _common(ex)
    ex.set_defaults(func=_scrubbed(cmd_cvat_export_dataset))

    bk = sub.add_parser("backup", help="back up tasks (annotations, labels, media) as one zip each")
    bk.add_argument("--task", type=int, action="append", required=True,
                    help="task id (repeat for more tasks)")
    bk.add_argument("--out", required=True,
                    help="folder for task_<id>_<name>.zip files (or a file for one task)")
    bk.add_argument("--force", action="store_true", help="back up again tasks whose zip is there")
    bk.add_argument("--poll", type=float, default=2.0, help="seconds between status checks (2)")
    _common(bk)
    bk.set_defaults(func=_scrubbed(cmd_cvat_backup))

    rs = sub.add_parser("restore", help="create new tasks from backup zips; prints their ids")
    rs.add_argument("files", nargs="+", help="backup zip(s)")
    rs.add_argument("--project", type=int, help="put the new tasks in this project")
    rs.add_argument("--poll", type=float, default=2.0, help="seconds between status checks (2)")
    _common(rs)
    rs.set_defaults(func=_scrubbed(cmd_cvat_restore))


__all__ = ["add_transfer_commands", "cmd_cvat_backup", "cmd_cvat_export_dataset", "cmd_cvat_restore"]
