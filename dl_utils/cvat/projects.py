"""CVAT projects and their tasks: progress listings and bulk task creation, idempotent by name.

A project with hundreds of videos is managed as a whole: which tasks exist, how far their jobs are
(CVAT's job ``state`` -- new, in progress, completed, rejected -- and ``stage`` -- annotation,
validation, acceptance), and one task per video or image folder made in one command that can be
run again after a failure without making a task twice (a task whose name is already in the project
is skipped). Task creation itself is :func:`dl_utils.cvat.tasks.create_task`, the same code
``dl-utils cvat create-task`` runs.

Lists are read through :meth:`CvatConnection.get_paginated` (CVAT pages every list) and filtered
again on this side by project / task id, so a server that ignores a filter parameter cannot mix in
another project's tasks.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Callable, Iterable, Sequence

from ..errors import InputError
from .connection import CvatConnection, cvat_error

#: cvat/apps/engine/models.py StateChoice and StageChoice, in their order of progress
JOB_STATES = ("new", "in progress", "rejected", "completed")
JOB_STAGES = ("annotation", "validation", "acceptance")
VIDEO_EXTENSIONS = (".mp4", ".avi", ".mkv", ".mov", ".webm", ".mpg", ".mpeg", ".m4v")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
#: cvat/apps/engine/models.py Task.name: max_length=256
MAX_TASK_NAME = 256


@dataclass
class Progress:
    """Jobs of a task (or of every task of a project) by state and stage, and their frames.

    ``frames_done`` counts the frames of completed jobs (CVAT does not report annotated frames
    itself; frames shared by overlapping jobs count once per job, capped at the task size).
    """

    jobs: int = 0
    by_state: dict[str, int] = field(default_factory=dict)
    by_stage: dict[str, int] = field(default_factory=dict)
    frames_done: int = 0

    def add(self, other: "Progress") -> None:
        self.jobs += other.jobs
        for mine, theirs in ((self.by_state, other.by_state), (self.by_stage, other.by_stage)):
            for k, v in theirs.items():
                mine[k] = mine.get(k, 0) + v
        self.frames_done += other.frames_done

    def to_dict(self) -> dict[str, Any]:
        return {"jobs": self.jobs, "by_state": dict(self.by_state), "by_stage": dict(self.by_stage),
                "frames_done": self.frames_done}


@dataclass
class TaskSummary:
    """One task as the listing shows it."""

    id: int
    name: str
    project_id: int | None
    size: int
    mode: str
    status: str
    labels: list[str]
    progress: Progress
    updated_date: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "name": self.name, "project_id": self.project_id, "size": self.size,
                "mode": self.mode, "status": self.status, "labels": list(self.labels),
                "updated_date": self.updated_date, **self.progress.to_dict()}


@dataclass
class ProjectSummary:
    """One project: its tasks' sizes and job progress summed, and its labels."""

    id: int
    name: str
    tasks: int
    size: int
    labels: list[str]
    progress: Progress

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "name": self.name, "tasks": self.tasks, "size": self.size,
                "labels": list(self.labels), **self.progress.to_dict()}


# ------------------------------------------------------------------------------------ reading
def _unique(items: Iterable[dict]) -> list[dict]:
    """Items by id, once each, in id order (a list paged while it changes may repeat one)."""
    seen: dict[int, dict] = {}
    for it in items:
        seen.setdefault(int(it["id"]), it)
    return [seen[k] for k in sorted(seen)]


def get_project(conn: CvatConnection, project_id: int) -> dict:
    """The project's JSON; a missing project is a one-line :class:`CvatError` naming it."""
    from ..errors import CvatError

    try:
        return conn.request("GET", f"/api/projects/{int(project_id)}",
                            what=f"reading project {project_id}") or {}
    except CvatError as e:
        if "404" in str(e) or "not found" in str(e).lower():
            raise cvat_error(f"project {project_id} does not exist on {conn.host} (or is not"
                             " visible to this user); list them with `dl-utils cvat projects`") from None
        raise


def project_tasks(conn: CvatConnection, project_id: int) -> list[dict]:
    """Every task of the project (task JSON), in id order."""
    pid = int(project_id)
    items = conn.get_paginated("/api/tasks", {"project_id": pid}, what=f"listing the tasks of project {pid}")
    return _unique(t for t in items if t.get("project_id") == pid)


def project_labels(conn: CvatConnection, project_id: int) -> list[dict]:
    """The project's labels (label JSON with attributes), in id order."""
    pid = int(project_id)
    items = conn.get_paginated("/api/labels", {"project_id": pid},
                               what=f"listing the labels of project {pid}")
    return _unique(lb for lb in items if lb.get("project_id") == pid and not lb.get("parent_id"))


def _progress(jobs: Sequence[dict], size: int) -> Progress:
    p = Progress(jobs=len(jobs))
    done = 0
    for j in jobs:
        st, sg = str(j.get("state") or "new"), str(j.get("stage") or "annotation")
        p.by_state[st] = p.by_state.get(st, 0) + 1
        p.by_stage[sg] = p.by_stage.get(sg, 0) + 1
        if st == "completed":
            n = j.get("frame_count")
            if n is None:
                n = int(j.get("stop_frame", 0)) - int(j.get("start_frame", 0)) + 1
            done += int(n)
    p.frames_done = min(done, size) if size else done
    return p


def _summaries(tasks: list[dict], jobs: list[dict], labels_of: Callable[[dict], list[str]]
               ) -> list[TaskSummary]:
    by_task: dict[int, list[dict]] = {}
    for j in jobs:
        by_task.setdefault(int(j["task_id"]), []).append(j)
    out = []
    for t in tasks:
        size = int(t.get("size") or 0)
        out.append(TaskSummary(
            id=int(t["id"]), name=str(t.get("name") or ""), project_id=t.get("project_id"),
            size=size, mode=str(t.get("mode") or ""), status=str(t.get("status") or ""),
            labels=labels_of(t), progress=_progress(by_task.get(int(t["id"]), []), size),
            updated_date=str(t.get("updated_date") or "")))
    return out


def list_tasks(conn: CvatConnection, project_id: int) -> list[TaskSummary]:
    """The project's tasks with their job progress (three paged lists, not one request a task)."""
    pid = int(project_id)
    get_project(conn, pid)
    tasks = project_tasks(conn, pid)
    ids = {int(t["id"]) for t in tasks}
    jobs = conn.get_paginated("/api/jobs", {"project_id": pid}, what=f"listing the jobs of project {pid}")
    jobs = _unique(j for j in jobs if int(j.get("task_id", -1)) in ids)
    names = [lb["name"] for lb in project_labels(conn, pid)]
    return _summaries(tasks, jobs, lambda t: names)


def list_projects(conn: CvatConnection) -> list[ProjectSummary]:
    """Every project visible to the user, with task count, size, labels and job progress."""
    projects = _unique(conn.get_paginated("/api/projects", what="listing the projects"))
    tasks = _unique(conn.get_paginated("/api/tasks", what="listing the tasks"))
    jobs = _unique(conn.get_paginated("/api/jobs", what="listing the jobs"))
    out = []
    for p in projects:
        pid = int(p["id"])
        mine = [t for t in tasks if t.get("project_id") == pid]
        ids = {int(t["id"]) for t in mine}
        summ = _summaries(mine, [j for j in jobs if int(j.get("task_id", -1)) in ids], lambda t: [])
        prog = Progress()
        for s in summ:
            prog.add(s.progress)
        out.append(ProjectSummary(id=pid, name=str(p.get("name") or ""), tasks=len(mine),
                                  size=sum(s.size for s in summ),
                                  labels=[lb["name"] for lb in project_labels(conn, pid)], progress=prog))
    return out


def _counts_text(d: dict[str, int], order: Sequence[str]) -> str:
    keys = [k for k in order if d.get(k)] + sorted(k for k in d if k not in order and d[k])
    return ", ".join(f"{d[k]} {k}" for k in keys) or "-"


def format_projects(items: Sequence[ProjectSummary]) -> str:
    """A plain-text table of :func:`list_projects`."""
    rows = [("id", "name", "tasks", "frames", "done", "jobs by state", "jobs by stage", "labels")]
    for p in items:
        rows.append((str(p.id), p.name, str(p.tasks), str(p.size), str(p.progress.frames_done),
                     _counts_text(p.progress.by_state, JOB_STATES),
                     _counts_text(p.progress.by_stage, JOB_STAGES), ", ".join(p.labels) or "-"))
    return _table(rows)


def format_tasks(items: Sequence[TaskSummary]) -> str:
    """A plain-text table of :func:`list_tasks`."""
    rows = [("id", "name", "mode", "frames", "done", "jobs", "jobs by state", "jobs by stage")]
    for t in items:
        rows.append((str(t.id), t.name, t.mode or "-", str(t.size), str(t.progress.frames_done),
                     str(t.progress.jobs), _counts_text(t.progress.by_state, JOB_STATES),
                     _counts_text(t.progress.by_stage, JOB_STAGES)))
    return _table(rows)


def _table(rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


# ------------------------------------------------------------------------------------ create-tasks
@dataclass(frozen=True)
class CreateTasksOptions:
    """How :func:`create_tasks` makes each task (the options of ``create-task`` that apply to
    many sources at once)."""

    resource: str = "local"  # local (upload) | share (paths on the server's share)
    name_template: str = "{stem}"
    segment_size: int | None = None
    overlap: int | None = None
    image_quality: int = 95
    poll_interval: float = 2.0
    dry_run: bool = False


@dataclass(frozen=True)
class Source:
    """One task to make: its name, the files (a video, the images of a folder, or a share path)."""

    source: str
    name: str
    kind: str  # video | images | share-folder
    files: tuple[str, ...]


@dataclass
class CreateTasksReport:
    """What :func:`create_tasks` did (or would do with ``dry_run``), source by source."""

    project_id: int
    created: list[dict[str, Any]] = field(default_factory=list)
    skipped: list[dict[str, Any]] = field(default_factory=list)
    planned: list[dict[str, Any]] = field(default_factory=list)
    dry_run: bool = False

    def summary(self) -> dict[str, Any]:
        return {"project": self.project_id, "dry_run": self.dry_run, "created": self.created,
                "skipped": self.skipped, "planned": self.planned}

    def __str__(self) -> str:
        lines = []
        for c in self.created:
            lines.append(f"created task {c['task']} {c['name']!r} from {c['source']} ({c['frames']} frames)")
        for p in self.planned:
            lines.append(f"would create task {p['name']!r} from {p['source']} ({p['kind']},"
                         f" {p['files']} file(s))")
        for s in self.skipped:
            note = "" if s.get("size") else " (it has no data: check it in CVAT)"
            lines.append(f"skipped {s['name']!r}: task {s['task']} of that name is already in project"
                         f" {self.project_id}{note}")
        verb = "would create" if self.dry_run else "created"
        n = len(self.planned) if self.dry_run else len(self.created)
        lines.append(f"project {self.project_id}: {verb} {n} task(s), skipped {len(self.skipped)}")
        return "\n".join(lines)


def _natural_key(s: str) -> list[Any]:
    import re

    return [int(x) if x.isdigit() else x.lower() for x in re.split(r"(\d+)", s)]


def _task_name(template: str, path: str, index: int) -> str:
    p = PurePosixPath(path.replace(os.sep, "/").rstrip("/"))
    is_video = p.suffix.lower() in VIDEO_EXTENSIONS
    fields = {"stem": p.stem if is_video else p.name, "name": p.name, "parent": p.parent.name,
              "index": index}
    try:
        name = template.format(**fields)
    except (KeyError, IndexError, ValueError) as e:
        raise InputError(f"--name-template {template!r}: {type(e).__name__} {e}; use the fields {{stem}},"
                         " {name}, {parent} and {index}") from None
    name = name.strip()
    if not name or len(name) > MAX_TASK_NAME:
        raise InputError(f"--name-template {template!r} gives the name {name!r} for {path}; a task name"
                         f" needs 1..{MAX_TASK_NAME} characters")
    return name


def resolve_sources(sources: Sequence[str | os.PathLike[str]], options: CreateTasksOptions) -> list[Source]:
    """One :class:`Source` per video file or image folder; names made from the template.

    Local sources are checked now (a folder without images is refused by name); share paths are
    the server's to check (a video by its extension, anything else is a folder CVAT reads whole).
    Two sources that would get one name are refused before anything is created.
    """
    if options.resource not in ("local", "share"):
        raise InputError(f"--resource {options.resource!r}: use local (upload) or share (server files)")
    if not sources:
        raise InputError("give at least one source: a video file or a folder of images")
    out: list[Source] = []
    for i, src in enumerate(sources):
        s = os.fspath(src)
        name = _task_name(options.name_template, s, i)
        if options.resource == "share":
            video = PurePosixPath(s).suffix.lower() in VIDEO_EXTENSIONS
            out.append(Source(s, name, "video" if video else "share-folder", (s,)))
            continue
        p = Path(s)
        if p.is_file():
            if p.suffix.lower() not in VIDEO_EXTENSIONS:
                raise InputError(f"{p} is not a video ({', '.join(VIDEO_EXTENSIONS)}); give videos or"
                                 " folders of images")
            out.append(Source(s, name, "video", (s,)))
        elif p.is_dir():
            images = sorted((f for f in p.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS),
                            key=lambda f: _natural_key(f.name))
            if not images:
                raise InputError(f"folder {p} holds no images ({', '.join(IMAGE_EXTENSIONS)}); give a"
                                 " folder of frames, or the video files themselves")
            out.append(Source(s, name, "images", tuple(str(f) for f in images)))
        else:
            raise InputError(f"source {p} does not exist; give video files or folders of images")
    seen: dict[str, str] = {}
    for item in out:
        if item.name in seen:
            raise InputError(f"{seen[item.name]} and {item.source} would both make task {item.name!r};"
                             " rename one or use --name-template (e.g. '{parent}_{stem}')")
        seen[item.name] = item.source
    return out


def create_tasks(conn: CvatConnection, project_id: int, sources: Sequence[str | os.PathLike[str]],
                 options: CreateTasksOptions | None = None, *, progress: bool = True) -> CreateTasksReport:
    """Make one task per source in the project; a name already there is skipped and reported.

    Resumable: tasks are made one by one, each complete (data uploaded and checked) before the
    next, so after a failure running the same command again skips the ones made and goes on.
    A task that failed half-way is deleted again by :func:`~dl_utils.cvat.tasks.create_task`.
    """
    from tqdm.auto import tqdm

    from .tasks import TaskInfo, create_task

    opts = options or CreateTasksOptions()
    pid = int(project_id)
    resolved = resolve_sources(sources, opts)
    get_project(conn, pid)
    existing: dict[str, dict] = {}
    for t in project_tasks(conn, pid):
        existing.setdefault(str(t.get("name")), t)
    rep = CreateTasksReport(project_id=pid, dry_run=opts.dry_run)
    todo: list[Source] = []
    for s in resolved:
        old = existing.get(s.name)
        if old is not None:
            rep.skipped.append({"name": s.name, "task": int(old["id"]), "source": s.source,
                                "size": int(old.get("size") or 0)})
        else:
            todo.append(s)
    if opts.dry_run:
        rep.planned = [{"name": s.name, "source": s.source, "kind": s.kind, "files": len(s.files)}
                       for s in todo]
        return rep
    bar = tqdm(todo, desc=f"creating tasks in project {pid}", unit="task", disable=not progress or not todo)
    for s in bar:
        try:
            info = create_task(
                conn, s.name, list(s.files), project_id=pid, resource=opts.resource,
                segment_size=opts.segment_size, overlap=opts.overlap, image_quality=opts.image_quality,
                sorting_method="natural" if s.kind == "share-folder" else None,
                poll_interval=opts.poll_interval)
        except InputError as e:  # refused before anything was made for this source
            raise InputError(f"task {s.name!r} from {s.source}: {e}") from None
        except Exception as e:
            done = f"{len(rep.created)} task(s) were made before it" if rep.created else "none was made"
            raise cvat_error(f"creating task {s.name!r} from {s.source} failed: {e} ({done}; run the"
                             " same command again to go on: the tasks made are skipped)") from None
        assert isinstance(info, TaskInfo)
        rep.created.append({"name": s.name, "task": info.id, "source": s.source, "frames": info.size,
                            "jobs": [j.id for j in info.jobs]})
    return rep


__all__ = ["CreateTasksOptions", "CreateTasksReport", "JOB_STAGES", "JOB_STATES", "Progress",
           "ProjectSummary", "Source", "TaskSummary", "create_tasks", "format_projects", "format_tasks",
           "get_project", "list_projects", "list_tasks", "project_labels", "project_tasks",
           "resolve_sources"]
