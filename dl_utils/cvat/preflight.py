"""Check a CVAT task before any work: server, credentials, task, frames and labels, in seconds.

``dl-utils annotate VIDEO ... --cvat-task N`` runs SAM2 / GroundingDINO for minutes or hours and
pushes at the end; :func:`preflight` makes every refusal the push would give happen first: a
malformed host, an unreachable or unsupported server, refused credentials, a task that does not
exist (or is not visible in the organisation), has no data or no annotation job, frames that do not
match the media (count, numbering, per-frame sizes, image names), and labels whose type does not
take the shape to push.
"""

from __future__ import annotations

from typing import Any, Iterable

from ..annotations import MediaInfo
from ..errors import InputError
from ._wire import CVAT_TYPE
from .connection import CvatConnection, connect, cvat_error
from .labels import compatible, task_labels
from .tasks import check_task_media, read_task


def preflight(
    task_id: int,
    *,
    media: MediaInfo | None = None,
    labels: Iterable[str] = (),
    shape: str = "mask",
    connection: CvatConnection | None = None,
    media_name: str = "the media",
    **connect_kw: Any,
) -> dict[str, Any]:
    """Connect (or use ``connection``) and check task ``task_id`` as :func:`push` would.

    ``media``: the frames the run will write (numbering, sizes, names); ``labels``: label names the
    run may give its objects (labels the task lacks are fine: push creates them; a label the task
    has with a type that refuses ``shape`` is not). ``connect_kw`` go to :func:`connect` (host,
    token, org, retry, prompt...). Returns what was checked; raises :class:`CvatError` (or
    :class:`InputError` for a malformed argument) naming the problem and what to do.
    """
    if shape not in CVAT_TYPE:
        raise InputError(f"shape {shape!r}: use mask, polygon or box")
    try:
        task_id = int(task_id)
    except (TypeError, ValueError):
        raise InputError(f"CVAT task id {task_id!r} is not a number") from None
    if task_id < 1:
        raise InputError(f"CVAT task id {task_id}: task ids start at 1")
    own = connection is None
    conn = connection if connection is not None else connect(**connect_kw)
    try:
        task = read_task(conn, task_id)
        if media is not None:
            check_task_media(media, task, media_name)
        have = {lb.name: lb for lb in task_labels(conn, task.id)}
        ctype = CVAT_TYPE[shape]
        names = sorted({str(n) for n in labels if n})
        bad = [f"{n!r} (type {have[n].type})" for n in names if n in have
               and not compatible(have[n].type, ctype)]
        if bad:
            raise cvat_error(
                f"task {task.id}: label(s) {', '.join(bad)} do not accept {ctype} shapes; use another"
                f" --cvat-shape, or change the label type in CVAT to 'any' or '{ctype}'"
            )
        return {"host": conn.host, "server_version": conn.server_version_text, "task": task.id,
                "name": task.name, "frames": task.size, "jobs": len(task.jobs),
                "labels_present": [n for n in names if n in have],
                "labels_to_create": [n for n in names if n not in have]}
    finally:
        if own:
            conn.close()


__all__ = ["preflight"]
