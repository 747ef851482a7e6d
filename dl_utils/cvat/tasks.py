"""CVAT tasks: create one from local, server or cloud files with the store's frame numbering; read an
existing task's data meta and refuse a store that does not match it.

CVAT's frame ``i`` of a task is source frame ``start_frame + i * step`` (``stop_frame`` inclusive),
exactly the store's plain numbering (:class:`~dl_utils.annotations.MediaInfo`), so a task is created
with the store's ``start``/``stop``/``step``. Every push or pull converts by POSITION: task frame
``i`` is ``media.frames[i]`` and a store frame's task frame is :meth:`MediaInfo.task_index`, which
holds for every numbering:

* ``first_frame`` N (a shot's video numbered from 1001): the task holds the whole video or image set
  with ``start_frame``/``stop_frame`` less N (:meth:`MediaInfo.task_frames`);
* ``names`` (``shot.1001.png``..., gaps kept): a gapped sequence is a frame list, not
  ``start + i * step``, so the task is made from just the kept files, in order (task frames 0..n-1).

The task's data meta is checked against :meth:`MediaInfo.task_frames`, never the shot numbers.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any, Sequence

from ..annotations import MediaInfo
from ..errors import InputError
from .connection import CvatConnection, cvat_error
from .labels import labels_of

if TYPE_CHECKING:
    from ..store import AnnotationStore

#: Job types annotations are pushed to (ground-truth and consensus jobs are someone else's work).
ANNOTATION_JOB_TYPES = ("annotation", None, "")


@dataclass(frozen=True)
class JobInfo:
    """One job of a task: its id and its task-relative frame range (inclusive)."""

    id: int
    start: int
    stop: int
    type: str | None = "annotation"


@dataclass
class TaskInfo:
    """A task as the sinks need it: its id, name, project, media (numbering, size) and jobs."""

    id: int
    name: str
    media: MediaInfo
    jobs: list[JobInfo]
    project_id: int | None = None
    mode: str | None = None
    widths: tuple[tuple[int, int], ...] = ()

    @property
    def size(self) -> int:
        return len(self.media.frames)

    @property
    def is_video(self) -> bool:
        return self.mode == "interpolation" or self.media.frame_names is None

    def jobs_of(self) -> list[list[int]]:
        """Every annotation job holding each task frame index (two or more in job overlaps), in
        the order of the jobs' start frames."""
        out: list[list[int]] = [[] for _ in range(self.size)]
        for job in sorted(self.jobs, key=lambda j: (j.start, j.id)):
            for i in range(max(0, job.start), min(self.size - 1, job.stop) + 1):
                out[i].append(job.id)
        return out

    def job_of(self) -> list[int]:
        """Job id for every task frame index: the first annotation job whose range holds it.

        With job overlap a frame belongs to two jobs; giving it to the first keeps every shape on
        the server once (CVAT's task export merges overlapping jobs anyway).
        """
        out = [-1] * self.size
        for job in sorted(self.jobs, key=lambda j: (j.start, j.id)):
            for i in range(max(0, job.start), min(self.size - 1, job.stop) + 1):
                if out[i] == -1:
                    out[i] = job.id
        return out


def _step_of(frame_filter: str | None, where: str) -> int:
    ff = (frame_filter or "").strip()
    if not ff:
        return 1
    m = re.fullmatch(r"step\s*=\s*(\d+)", ff)
    if not m or int(m.group(1)) < 1:
        raise cvat_error(f"{where}: frame filter {ff!r} is not 'step=N'; dl_utils handles only steps")
    return int(m.group(1))


def read_task(conn: CvatConnection, task_id: int) -> TaskInfo:
    """The task's data meta (numbering, frame size, names) and its annotation jobs."""
    task_id = int(task_id)
    where = f"task {task_id}"
    task = conn.request("GET", f"/api/tasks/{task_id}", what=f"reading {where}") or {}
    meta = conn.request("GET", f"/api/tasks/{task_id}/data/meta", what=f"reading the data meta of {where}")
    if not meta or not meta.get("size"):
        raise cvat_error(f"{where} has no data yet (size 0); upload its images or video first, or"
                         " create it with `dl-utils cvat create-task`")
    size = int(meta["size"])
    start = int(meta.get("start_frame") or 0)
    step = _step_of(meta.get("frame_filter"), where)
    stop = meta.get("stop_frame")
    frames_meta = meta.get("frames") or []
    if not frames_meta:
        raise cvat_error(f"{where}: the data meta lists no frame sizes; is the task data ready?")
    sizes = tuple((int(f["width"]), int(f["height"])) for f in frames_meta)
    mode = task.get("mode")
    names = None
    if len(frames_meta) == size and mode != "interpolation":
        names = [str(f.get("name") or f"frame_{start + i * step:06d}") for i, f in enumerate(frames_meta)]
    w, h = sizes[0]
    # image tasks keep each image's own size (data meta frames[i]); a video has one entry
    per_frame = list(sizes) if len(sizes) == size and size > 1 else None
    media = MediaInfo(
        name=str(task.get("name") or where), width=w, height=h,
        frames=[start + i * step for i in range(size)], start=start,
        stop=int(stop) if stop is not None else start + (size - 1) * step, step=step,
        frame_names=names, frame_sizes=per_frame,
    )
    jobs = []
    for j in conn.get_paginated("/api/jobs", {"task_id": task_id}, what=f"listing the jobs of {where}"):
        if j.get("type") not in ANNOTATION_JOB_TYPES:
            continue
        jobs.append(JobInfo(int(j["id"]), int(j.get("start_frame", 0)),
                            int(j.get("stop_frame", size - 1)), j.get("type")))
    jobs.sort(key=lambda j: (j.start, j.id))  # CVAT lists jobs newest first; we want frame order
    if not jobs:
        raise cvat_error(f"{where} has no annotation job; check the task in CVAT")
    return TaskInfo(id=task_id, name=media.name, media=media, jobs=jobs,
                    project_id=task.get("project_id"), mode=mode, widths=tuple(sorted(set(sizes))))


def check_task_media(store_media: MediaInfo, task: TaskInfo, store_name: str = "the store", *,
                     advice: str | None = None) -> None:
    """Raise :class:`CvatError` naming both sides when the store's frames are not the task's."""
    tm = task.media
    problems = []
    if len(store_media.frames) != len(tm.frames):
        problems.append(f"{len(store_media.frames)} frames in {store_name} but {len(tm.frames)} in"
                        f" task {task.id}")
    want = _task_frames(store_media)
    if want != list(tm.frames):
        shot = ("" if _plain(store_media) else
                f" (task frames of its {store_media.numbering_text()} frames"
                f" {store_media.frames[0] if store_media.frames else None}..)")
        problems.append(
            f"numbering start={want[0] if want else None}"
            f" step={store_media.step} in {store_name}{shot} but start={tm.start} step={tm.step} in task"
            f" {task.id}"
        )
    if not problems:
        bad = _size_mismatches(store_media, tm)
        if bad:
            i, (sw, sh), (tw, th) = bad[0]
            name = (f" ({PurePosixPath(tm.frame_names[i]).name})" if tm.frame_names else "")
            problems.append(f"{len(bad)} frame(s) differ in size, first task frame {i}{name}:"
                            f" {sw}x{sh} in {store_name} but {tw}x{th} in task {task.id}")
    if (not problems and store_media.frame_names is not None and tm.frame_names is not None):
        mine = [PurePosixPath(n).name for n in store_media.frame_names]
        theirs = [PurePosixPath(n).name for n in tm.frame_names]
        diff = [i for i, (a, b) in enumerate(zip(mine, theirs)) if a != b]
        if diff:
            i = diff[0]
            problems.append(f"{len(diff)} image name(s) differ, first task frame {i}: {mine[i]!r} in"
                            f" {store_name} but {theirs[i]!r} in task {task.id}")
    if (problems and advice is None and len(problems) == 1 and "differ in size" in problems[0]
            and getattr(store_media, "frame_sizes", None) is None and getattr(tm, "frame_sizes", None)):
        advice = (f"The images of task {task.id} have different sizes but {store_name} keeps one size"
                  " for all of them (a store made before dl_utils kept each image's size, or from"
                  " other files): make the store again from the images (`dl-utils import` or"
                  f" `dl-utils annotate`), or pull the task into a new store (`dl-utils cvat pull"
                  f" NEW.sqlite --task {task.id}`)")
    if problems:
        raise cvat_error(
            f"task {task.id} ({tm.name!r}) does not match {store_name} ({store_media.name!r}): "
            + "; ".join(problems) + ". " + (advice or (
                "Use the task made for this media (or create one with `dl-utils cvat create-task`),"
                " or a store made with the task's frame range"))
        )


def _size_mismatches(a: MediaInfo, b: MediaInfo) -> list[tuple[int, tuple[int, int], tuple[int, int]]]:
    """(task frame, size in a, size in b) of every frame whose size differs."""
    sa = a.sizes() if hasattr(a, "sizes") else [(a.width, a.height)] * len(a.frames)
    sb = b.sizes() if hasattr(b, "sizes") else [(b.width, b.height)] * len(b.frames)
    return [(i, x, y) for i, (x, y) in enumerate(zip(sa, sb)) if tuple(x) != tuple(y)]


def _resource_kind(resource: str) -> Any:
    from cvat_sdk.core.proxies.tasks import ResourceType

    kinds = {"local": ResourceType.LOCAL, "share": ResourceType.SHARE, "server": ResourceType.SHARE,
             "cloud": ResourceType.SHARE, "remote": ResourceType.REMOTE}
    if resource not in kinds:
        raise InputError(f"resource {resource!r}: use local, share (server files), cloud or remote")
    return kinds[resource]


def _plain(media: MediaInfo) -> bool:
    """Frame numbers are positions in the source (CVAT's numbering); media from elsewhere (a test's
    stand-in) without the numbering fields is plain."""
    return bool(getattr(media, "plain_numbering", True))


def _task_frames(media: MediaInfo) -> list[int]:
    """The CVAT frame numbers a task made from ``media`` has (``MediaInfo.task_frames``)."""
    return media.task_frames() if hasattr(media, "task_frames") else list(media.frames)


def _file_positions(media: MediaInfo) -> list[int]:
    """Index into :func:`files_for_media`'s list of each frame of ``media``."""
    if getattr(media, "numbering", "index") == "names":
        return list(range(len(media.frames)))
    return _task_frames(media)


def files_for_media(media: MediaInfo) -> list[Path]:
    """The local files to upload for a store's media: the video, or every image of its source.

    All images are uploaded (not just the kept ones) so that ``start``/``step`` number them exactly
    as the source does; except for frames numbered by file names, where just the kept files go, in
    order (a sequence with gaps cannot be described by ``start``/``step``).
    """
    if not media.path:
        raise InputError(f"media {media.name!r} has no path; give the files to upload (files=/--files)")
    p = Path(media.path)
    if media.frame_names is None:
        if not p.is_file():
            raise InputError(f"video {p} of media {media.name!r} does not exist; give files=/--files")
        return [p]
    from ..video_utils import open_frames

    named = getattr(media, "numbering", "index") == "names"
    src = open_frames(p, frame_numbers="names") if named else open_frames(p)
    try:
        if named:
            missing = [f for f in media.frames if f not in set(src.frame_numbers)]
            if missing:
                raise InputError(f"frame {missing[0]} of media {media.name!r} has no file in {p} any more"
                                 f" ({len(missing)} missing); restore the files or give files=/--files")
            return [src.file_of(f) for f in media.frames]  # type: ignore[attr-defined]
        return list(src.files)  # type: ignore[attr-defined]
    finally:
        src.close()


def create_task(
    conn: CvatConnection,
    name: str,
    files: Sequence[str | os.PathLike] | None = None,
    *,
    media: MediaInfo | None = None,
    labels: Any = None,
    project_id: int | None = None,
    resource: str = "local",
    cloud_storage_id: int | None = None,
    start: int | None = None,
    stop: int | None = None,
    step: int | None = None,
    segment_size: int | None = None,
    overlap: int | None = None,
    image_quality: int = 95,
    sorting_method: str | None = None,
    use_cache: bool = True,
    poll_interval: float = 2.0,
    dry_run: bool = False,
) -> TaskInfo | dict[str, Any]:
    """Create a task whose frame ``i`` is source frame ``start + i * step`` (of a store made with
    ``first_frame`` or names numbering: the store's i-th frame, see the module doc).

    ``media`` (a store's :class:`MediaInfo`) gives the numbering and, when ``files`` is not given,
    the files (for names numbering: the kept files, in order, which ``files`` must then be too). ``resource``: ``local`` (upload), ``share`` (paths on the server's share), ``cloud``
    (paths in cloud storage ``cloud_storage_id``) or ``remote`` (URLs). After the upload the task's
    data meta is read back and compared with ``media``. ``dry_run`` returns the plan only.
    """
    start_n, stop_n, step_n = _numbering(media, start, stop, step)
    paths = _task_files(files, media, resource)
    _check_options(resource, cloud_storage_id, segment_size, overlap, image_quality, start_n, stop_n)
    if resource == "local" and media is not None:
        _check_local_sizes(media, paths)  # before anything exists on the server
    label_specs = _label_specs(labels, name) if project_id is None else []
    images = len(paths) > 1 or (media is not None and media.frame_names is not None)
    params: dict[str, Any] = {"image_quality": int(image_quality), "start_frame": start_n,
                              "use_cache": bool(use_cache)}
    if stop_n is not None:
        params["stop_frame"] = int(stop_n)
    if step_n > 1:
        params["frame_step"] = step_n
    if sorting_method or images:
        params["sorting_method"] = sorting_method or "predefined"  # keep the source's order
    if cloud_storage_id is not None:
        params["cloud_storage_id"] = int(cloud_storage_id)
    spec: dict[str, Any] = {"name": name}
    if project_id is not None:
        spec["project_id"] = int(project_id)
    else:
        spec["labels"] = label_specs
    if segment_size:
        spec["segment_size"] = int(segment_size)
    if overlap is not None:
        spec["overlap"] = int(overlap)
    plan = {"task": spec, "data": params, "files": len(paths), "first_file": paths[0],
            "resource": resource}
    if dry_run:
        return plan
    return _create_and_upload(conn, spec, params, paths, resource, media, poll_interval)


def _numbering(media: MediaInfo | None, start: int | None, stop: int | None,
               step: int | None) -> tuple[int, int | None, int]:
    """``start``, ``stop`` (inclusive), ``step`` in CVAT's numbering: the arguments, else the media's
    (less its first frame; names numbering: 0, None, 1 over the kept files)."""
    if media is not None and not _plain(media):
        if (start, stop, step) != (None, None, None):
            raise InputError(
                f"media {media.name!r} is numbered with {media.numbering_text()}: a task made from it"
                " holds the store's frames, so leave out start/stop/step (--start/--stop/--step), or make"
                " the store with the frame range you want")
        if media.numbering == "names":
            return 0, None, 1
        tf = media.task_frames()
        return tf[0], tf[-1], media.step
    if media is not None:
        start = media.start if start is None else start
        stop = (media.frames[-1] if media.frames else media.stop) if stop is None else stop
        step = media.step if step is None else step
    start_n, step_n = int(start or 0), int(step or 1)
    if step_n < 1 or start_n < 0:
        raise InputError(f"start={start_n}, step={step_n}: start must be >= 0 and step >= 1")
    return start_n, stop, step_n


def _task_files(files: Sequence[str | os.PathLike[str]] | None, media: MediaInfo | None,
                resource: str) -> list[str]:
    """The files to put in the task (the media's when none are given); local ones must exist."""
    if files is None:
        if media is None or resource != "local":
            raise InputError("give the files to put in the task (files=/--files), or a store whose"
                             " media has a path")
        files = files_for_media(media)
    paths = [os.fspath(f) for f in files]
    if not paths:
        raise InputError("no files given for the task")
    if resource == "local":
        missing = [f for f in paths if not Path(f).is_file()]
        if missing:
            raise InputError(f"{len(missing)} file(s) do not exist, first {missing[0]}; check the paths")
    return paths


def _check_options(resource: str, cloud_storage_id: int | None, segment_size: int | None,
                   overlap: int | None, image_quality: int, start: int, stop: int | None) -> None:
    """Refuse option values the server would refuse, before anything exists on it."""
    if resource == "cloud" and cloud_storage_id is None:
        raise InputError("resource='cloud' needs cloud_storage_id (--cloud-storage ID)")
    if segment_size is not None and int(segment_size) < 0:
        raise InputError(f"segment_size={segment_size}: use 0 (one job) or more frames per job")
    if overlap is not None and int(overlap) < 0:
        raise InputError(f"overlap={overlap}: use 0 or more frames")
    if not 0 <= int(image_quality) <= 100:
        raise InputError(f"image_quality={image_quality}: use 0..100")
    if stop is not None and int(stop) < start:
        raise InputError(f"stop={stop} is before start={start}")


def _label_specs(labels: Any, name: str) -> list[dict[str, Any]]:
    """The labels of a task outside a project (it needs some), with palette colours where none."""
    from ..cv_utils.colors import color_for_index
    from .labels import check_label_names

    label_specs = []
    for i, lb in enumerate(labels_of(labels) if labels is not None else []):
        label_specs.append({"name": lb.name, "color": lb.color or color_for_index(i),
                            "type": lb.type or "any", "attributes": []})
    if not label_specs:
        raise InputError("a task outside a project needs labels: give labels= (a class table or"
                         " store) or project_id=")
    check_label_names([x["name"] for x in label_specs], f"task {name!r}")
    return label_specs


def _create_and_upload(conn: CvatConnection, spec: dict[str, Any], params: dict[str, Any],
                       paths: list[str], resource: str, media: MediaInfo | None,
                       poll_interval: float) -> TaskInfo:
    """Create the task, upload its data, check the server's data meta against ``media``; on any
    failure after the task exists, delete it again (the message says so)."""
    from cvat_sdk import models

    name = spec["name"]
    client = conn.client
    task = conn.call(client.tasks.create, models.TaskWriteRequest(**spec),
                     what=f"creating task {name!r}", idempotent=False)
    try:
        conn.call(task.upload_data, paths, resource_type=_resource_kind(resource), params=params,
                  wait_for_completion=True, status_check_period=poll_interval,
                  what=f"uploading {len(paths)} file(s) to task {task.id}", idempotent=False)
    except Exception as e:
        raise cvat_error(f"{e}; {_discard(conn, task.id)}") from None
    try:
        info = read_task(conn, task.id)
        if media is not None:
            check_task_media(
                media, info, f"media {media.name!r}",
                advice=("The server read the uploaded files differently from dl_utils (e.g. an image"
                        " rotated by its EXIF orientation, a video whose frame count differs): check"
                        " the files named above, or make the store from the task with"
                        f" `dl-utils cvat pull NEW.sqlite --task {task.id}`"))
    except Exception as e:
        raise cvat_error(f"{e}; {_discard(conn, task.id)}") from None
    return info


def _discard(conn: CvatConnection, task_id: int) -> str:
    """Delete a task this call just created and could not finish; say what became of it."""
    try:
        conn.request("DELETE", f"/api/tasks/{int(task_id)}", what=f"deleting task {task_id} again")
    except Exception:
        return (f"task {task_id} is left on the server without usable data: delete it in CVAT (or"
                f" `cvat-cli task delete {task_id}`) before trying again")
    return f"task {task_id}, created by this call, was deleted again (nothing is left on the server)"


def _check_local_sizes(media: MediaInfo, files: Sequence[str]) -> None:
    """The image files of a store's frames have the store's frame sizes (read from their headers)."""
    if media.frame_names is None or len(files) < 2:
        return
    from PIL import Image

    for f, k in zip(media.frames, _file_positions(media)):
        if not 0 <= k < len(files):
            raise InputError(f"frame {f} of media {media.name!r} has no file among the {len(files)}"
                             " given; give every image of the source, in its order")
        try:
            with Image.open(files[k]) as im:
                w, h = im.size
        except Exception as e:
            raise InputError(f"{files[k]} (frame {f}) cannot be read as an image ({type(e).__name__});"
                             " fix or remove it") from None
        want = media.size_of(f) if hasattr(media, "size_of") else (media.width, media.height)
        if (w, h) != tuple(want):
            raise InputError(
                f"{files[k]} (frame {f}) is {w}x{h} but the store has {want[0]}x{want[1]} for it;"
                " the files changed since the store was made: make the store again from these"
                " files (nothing was created on the server)")


def create_task_for_store(conn: CvatConnection, store: AnnotationStore, **kwargs: Any
                          ) -> TaskInfo | dict[str, Any]:
    """:func:`create_task` with the store's media, labels and name, remembering the task id."""
    from ..formats import require_media

    media = require_media(store)
    kwargs.setdefault("labels", None if kwargs.get("project_id") else store)
    name = kwargs.pop("name", None) or media.name
    res = create_task(conn, name, kwargs.pop("files", None), media=media, **kwargs)
    if isinstance(res, TaskInfo):
        tasks = dict(store.get_meta("cvat.tasks", {}) or {})
        tasks[conn.host] = sorted(set(tasks.get(conn.host, [])) | {res.id})
        store.set_meta("cvat.tasks", tasks)
    return res


__all__ = ["JobInfo", "TaskInfo", "check_task_media", "create_task", "create_task_for_store",
           "files_for_media", "read_task"]
