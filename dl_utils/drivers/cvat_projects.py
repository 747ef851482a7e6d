"""``dl-utils cvat projects | tasks | create-tasks | balance``: project-level CVAT commands.

The library code is :mod:`dl_utils.cvat.projects` and :mod:`dl_utils.cvat.balance`; this module
only parses options and prints. Server options, ``--json`` and ``--dry-run`` are the ones every
``dl-utils cvat`` command shares (:mod:`dl_utils.drivers.cvat`).
"""

from __future__ import annotations

import argparse
from pathlib import Path


def cmd_cvat_projects(args: argparse.Namespace) -> int:
    """List the projects with their tasks' progress."""
    from ..cvat.projects import format_projects, list_projects
    from .cvat import _print, connect_from_args

    with connect_from_args(args) as conn:
        items = list_projects(conn)
    if args.json:
        _print([p.to_dict() for p in items], True)
    else:
        print(format_projects(items) if items else "no projects")
    return 0


def cmd_cvat_tasks(args: argparse.Namespace) -> int:
    """List a project's tasks with their jobs' progress."""
    from ..cvat.projects import format_tasks, list_tasks
    from .cvat import _print, connect_from_args

    with connect_from_args(args) as conn:
        items = list_tasks(conn, args.project)
    if args.json:
        _print([t.to_dict() for t in items], True)
    else:
        print(format_tasks(items) if items else f"project {args.project} has no tasks")
    return 0


def cmd_cvat_create_tasks(args: argparse.Namespace) -> int:
    """One task per video / image folder in the project, skipping names already there."""
    from ..cvat.projects import CreateTasksOptions, create_tasks
    from .cvat import _print, connect_from_args

    opts = CreateTasksOptions(resource=args.resource, name_template=args.name_template,
                              segment_size=args.segment_size, overlap=args.overlap,
                              image_quality=args.quality, dry_run=args.dry_run)
    with connect_from_args(args) as conn:
        rep = create_tasks(conn, args.project, args.sources, opts, progress=not args.json)
    if args.json:
        _print(rep.summary(), True)
    else:
        print(rep)
    return 0


def cmd_cvat_balance(args: argparse.Namespace) -> int:
    """Plan (and with --apply carry out) task moves so each project's class shares meet the ratios."""
    from ..cvat.balance import BalanceOptions, balance, parse_ids, parse_ratios
    from .cvat import _print, connect_from_args

    opts = BalanceOptions(projects=parse_ids(args.projects), ratios=parse_ratios(args.ratios),
                          mode=args.mode, create_labels=args.create_labels,
                          cache_dir=Path(args.cache_dir) if args.cache_dir else None)
    apply = bool(args.apply) and not args.dry_run
    with connect_from_args(args) as conn:
        plan = balance(conn, opts, apply=apply, progress=not args.json)
    if args.json:
        _print({**plan.summary(), "applied_now": apply}, True)
    else:
        print(plan)
        if not apply and plan.moves:
            print("plan only: run again with --apply to carry it out")
    return 0


def add_project_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the project utilities to ``dl-utils cvat``'s subparsers."""
    from .cvat import _common, _scrubbed, add_server_arguments

    def listing(p: argparse.ArgumentParser) -> None:
        add_server_arguments(p)
        p.add_argument("--json", action="store_true", help="print the result as JSON")

    pr = sub.add_parser("projects", help="list projects: tasks, frames, jobs by state and stage, labels")
    listing(pr)
    pr.set_defaults(func=_scrubbed(cmd_cvat_projects))

    ts = sub.add_parser("tasks", help="list a project's tasks: frames, jobs by state and stage")
    ts.add_argument("--project", type=int, required=True, help="project id")
    listing(ts)
    ts.set_defaults(func=_scrubbed(cmd_cvat_tasks))

    ct = sub.add_parser("create-tasks", help="one task per video or image folder in a project;"
                        " names already there are skipped (run again to resume)")
    ct.add_argument("sources", nargs="+", help="video files or folders of images (with --resource"
                    " share: paths on the server's share)")
    ct.add_argument("--project", type=int, required=True, help="project id (its labels are used)")
    ct.add_argument("--resource", default="local", choices=("local", "share"),
                    help="upload local files (default) or use files on the server's share")
    ct.add_argument("--name-template", default="{stem}",
                    help="task name from {stem} (video name without extension / folder name),"
                    " {name}, {parent}, {index} (default '{stem}')")
    ct.add_argument("--segment-size", type=int, help="frames per job")
    ct.add_argument("--overlap", type=int, help="frames shared by consecutive jobs")
    ct.add_argument("--quality", type=int, default=95, help="image quality of the task's chunks")
    _common(ct)
    ct.set_defaults(func=_scrubbed(cmd_cvat_create_tasks))

    bl = sub.add_parser("balance", help="plan (and with --apply do) whole-task moves between projects"
                        " so each class's shares approach the ratios")
    bl.add_argument("--projects", required=True, help="project ids, e.g. 3,4,5 (train,val,test)")
    bl.add_argument("--ratios", required=True, help="target share of each project, e.g. 0.8,0.1,0.1")
    bl.add_argument("--apply", action="store_true", help="carry the plan out (idempotent; resumes an"
                    " unfinished one); without it the plan is only printed")
    bl.add_argument("--mode", default="move", choices=("move", "copy"),
                    help="move tasks (default) or copy them (backup + restore into the target)")
    bl.add_argument("--create-labels", action="store_true",
                    help="add labels a target project lacks instead of stopping")
    bl.add_argument("--cache-dir", help="where class counts and the plan being applied are kept"
                    " (default $XDG_CACHE_HOME/dl_utils/cvat)")
    _common(bl)
    bl.set_defaults(func=_scrubbed(cmd_cvat_balance))


__all__ = ["add_project_commands", "cmd_cvat_balance", "cmd_cvat_create_tasks", "cmd_cvat_projects",
           "cmd_cvat_tasks"]
