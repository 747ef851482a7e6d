"""CVAT as a sink: connection, label sync, tasks, push (idempotent, batched) and pull, on cvat-sdk.

See docs/cvat.md. This package never imports the engines (a sink); the cvat-sdk auto-annotation
function that runs them is the driver :mod:`dl_utils.auto_annotation`.
"""

from .connection import (
    Credentials,
    CvatConnection,
    RetryPolicy,
    connect,
    redact,
    resolve_credentials,
)
from .labels import LabelSync, sync_labels, task_labels
from .preflight import preflight
from .pull import PullReport, pull
from .push import DEFAULT_MAX_REQUEST_BYTES, PushReport, push, push_state
from .tasks import JobInfo, TaskInfo, check_task_media, create_task, create_task_for_store, read_task

__all__ = [
    "Credentials",
    "CvatConnection",
    "DEFAULT_MAX_REQUEST_BYTES",
    "JobInfo",
    "LabelSync",
    "PullReport",
    "PushReport",
    "RetryPolicy",
    "TaskInfo",
    "check_task_media",
    "preflight",
    "connect",
    "create_task",
    "create_task_for_store",
    "pull",
    "push",
    "push_state",
    "read_task",
    "redact",
    "resolve_credentials",
    "sync_labels",
    "task_labels",
]
