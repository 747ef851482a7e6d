"""Balance classes between CVAT projects (train / val / test) by moving or copying whole tasks.

Each task is one video or image folder and never split, so frames of one video can never land on
two sides. The plan comes from the tasks' per-class instance counts (a shape counts once per frame,
a track once), read from ``GET /api/tasks/{id}/annotations`` and cached on disk by the task's and
its jobs' ``updated_date``, so a re-run reads only the tasks that changed.

Planning is a deterministic greedy improvement: the objective is the sum over classes and projects
of (project's share of the class - its ratio)²; at each step the single task move (or copy) that
lowers it most is taken, ties going to the lower task id and then the earlier project, until no
move helps. The result is a local optimum, so planning again after the plan was applied finds
nothing to do.

Applying (``apply=True``) is idempotent and resumable: the plan is saved (in the cache folder)
before the first change and each step is checked against the server first (a task already in its
target project is skipped), so a run that stopped half-way is finished by running the same command
again. Nothing is ever deleted. A move is ``PATCH /api/tasks/{id} {"project_id": X}``; CVAT then
requires every label of the task's current project (used or not) to have a label of the same name
(and the same attributes) in the target project (cvat/apps/engine/serializers.py,
``TaskWriteSerializer.validate``/``update``), which is checked for the whole plan before anything
moves. A copy is a task backup restored into the target project (:mod:`dl_utils.cvat.transfer`).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from ..errors import CvatError, InputError
from .connection import CvatConnection, cvat_error
from .projects import get_project, project_labels, project_tasks

MODES = ("move", "copy")


# ------------------------------------------------------------------------------------ options
@dataclass(frozen=True)
class BalanceOptions:
    """What ``dl-utils cvat balance`` was asked: projects, their target shares, move or copy."""

    projects: tuple[int, ...]
    ratios: tuple[float, ...]
    mode: str = "move"
    create_labels: bool = False
    cache_dir: Path | None = None

    def __post_init__(self) -> None:
        if len(self.projects) < 2:
            raise InputError(f"--projects {','.join(map(str, self.projects))}: give two or more project ids")
        if len(set(self.projects)) != len(self.projects):
            raise InputError(f"--projects {','.join(map(str, self.projects))}: a project is named twice")
        if len(self.ratios) != len(self.projects):
            raise InputError(f"--ratios {','.join(map(str, self.ratios))}: give one ratio per project"
                             f" ({len(self.projects)})")
        if any(r < 0 for r in self.ratios) or abs(sum(self.ratios) - 1.0) > 1e-6:
            raise InputError(f"--ratios {','.join(map(str, self.ratios))}: the ratios must be >= 0 and"
                             f" sum to 1 (they sum to {sum(self.ratios):g})")
        if self.mode not in MODES:
            raise InputError(f"--mode {self.mode!r}: use move or copy")


def parse_ids(text: str, what: str = "--projects") -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise InputError(f"{what} {text!r}: give project ids separated by commas, e.g. 3,4,5") from None


def parse_ratios(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise InputError(f"--ratios {text!r}: give numbers separated by commas, e.g. 0.8,0.1,0.1") from None


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "dl_utils" / "cvat"


# ------------------------------------------------------------------------------------ counts
@dataclass
class TaskCounts:
    """One task: where it is and its instances per class (label name)."""

    id: int
    name: str
    project_id: int
    counts: dict[str, int]


def count_annotations(data: dict, label_names: dict[int, str]) -> dict[str, int]:
    """Instances per label name: every shape once, every track once (tags are not instances)."""
    out: dict[str, int] = {}
    for section in ("shapes", "tracks"):
        for obj in data.get(section) or []:
            name = label_names.get(int(obj.get("label_id", -1)), f"label {obj.get('label_id')}")
            out[name] = out.get(name, 0) + 1
    return out


class CountCache:
    """Per-class counts of tasks, on disk, valid while the task's and its jobs' dates stay."""

    def __init__(self, folder: Path | None, host: str):
        self.path = (folder or default_cache_dir()) / "class_counts.json"
        self.host = host
        self.data: dict[str, Any] = {}
        try:
            self.data = json.loads(self.path.read_text())
        except (OSError, ValueError):
            self.data = {}
        self.dirty = False

    def get(self, task_id: int, key: str) -> dict[str, int] | None:
        hit = (self.data.get(self.host) or {}).get(str(task_id))
        return dict(hit["counts"]) if hit and hit.get("key") == key else None

    def put(self, task_id: int, key: str, counts: dict[str, int]) -> None:
        self.data.setdefault(self.host, {})[str(task_id)] = {"key": key, "counts": counts}
        self.dirty = True

    def save(self) -> None:
        if not self.dirty:
            return
        from ..formats._common import write_atomic

        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(self.path, json.dumps(self.data, sort_keys=True))
        except Exception:  # a cache that cannot be written only costs time on the next run
            pass
        self.dirty = False


def read_counts(conn: CvatConnection, projects: Sequence[int], *, cache_dir: Path | None = None,
                progress: bool = True) -> list[TaskCounts]:
    """Every task of the projects with its per-class instance counts, in task id order."""
    from tqdm.auto import tqdm

    cache = CountCache(cache_dir, conn.host)
    tasks: list[tuple[dict, int]] = []
    names: dict[int, str] = {}
    for pid in projects:
        for lb in project_labels(conn, pid):
            names[int(lb["id"])] = str(lb["name"])
        tasks += [(t, int(pid)) for t in project_tasks(conn, pid)]
    jobs: dict[int, list[str]] = {}
    for pid in projects:
        for j in conn.get_paginated("/api/jobs", {"project_id": int(pid)},
                                    what=f"listing the jobs of project {pid}"):
            jobs.setdefault(int(j["task_id"]), []).append(f"{j['id']}@{j.get('updated_date', '')}")
    out = []
    for t, pid in tqdm(sorted(tasks, key=lambda x: int(x[0]["id"])), desc="reading class counts",
                       unit="task", disable=not progress):
        tid = int(t["id"])
        key = f"{t.get('updated_date', '')}|{pid}|" + ",".join(sorted(jobs.get(tid, [])))
        counts = cache.get(tid, key)
        if counts is None:
            data = conn.request("GET", f"/api/tasks/{tid}/annotations",
                                what=f"reading the annotations of task {tid}") or {}
            counts = count_annotations(data, names)
            cache.put(tid, key, counts)
        out.append(TaskCounts(tid, str(t.get("name") or ""), pid, counts))
    cache.save()
    return out


# ------------------------------------------------------------------------------------ planning
@dataclass(frozen=True)
class Move:
    """One step of a plan: task ``task_id`` goes (or is copied) from ``source`` to ``target``."""

    task_id: int
    name: str
    source: int
    target: int

    def to_dict(self) -> dict[str, Any]:
        return {"task": self.task_id, "name": self.name, "from": self.source, "to": self.target}


def project_totals(tasks: Sequence[TaskCounts], projects: Sequence[int], classes: Sequence[str],
                   where: dict[int, list[int]] | None = None) -> dict[int, dict[str, int]]:
    """Instances per class in each project (``where``: task id -> the projects holding it)."""
    out = {p: {c: 0 for c in classes} for p in projects}
    for t in tasks:
        for p in (where or {}).get(t.id, [t.project_id]):
            for c, n in t.counts.items():
                out[p][c] = out[p].get(c, 0) + n
    return out


def plan_moves(tasks: Sequence[TaskCounts], projects: Sequence[int], ratios: Sequence[float],
               mode: str = "move", *, max_steps: int | None = None) -> list[Move]:
    """The moves (or copies) that bring each class's shares toward ``ratios``; deterministic.

    Greedy improvement on the squared share error; in copy mode a task is copied at most once and
    a task whose name is already in two of the projects (an earlier copy) is left alone.
    """
    import numpy as np

    projects = list(projects)
    index = {p: i for i, p in enumerate(projects)}
    tasks = sorted((t for t in tasks if t.project_id in index), key=lambda t: t.id)
    classes = sorted({c for t in tasks for c, n in t.counts.items() if n})
    if not tasks or not classes:
        return []
    x = np.array([[t.counts.get(c, 0) for c in classes] for t in tasks], dtype=np.float64)
    home = np.array([index[t.project_id] for t in tasks])
    r = np.asarray(ratios, dtype=np.float64)
    k = len(projects)
    P = np.zeros((k, len(classes)))
    np.add.at(P, home, x)
    steps = max_steps if max_steps is not None else len(tasks) * k + 1
    eps = 1e-12
    if mode == "move":
        where = home.copy()
        T = P.sum(axis=0)
        X = x / T  # every class has instances, so T > 0
        sq = (X ** 2).sum(axis=1)
        for _ in range(steps):
            S = P / T - r[:, None]
            G = X @ S.T  # (tasks, projects)
            delta = 2 * sq[:, None] + 2 * (G - G[np.arange(len(tasks)), where][:, None])
            delta[np.arange(len(tasks)), where] = 0.0
            i, j = np.unravel_index(int(np.argmin(delta)), delta.shape)
            if delta[i, j] >= -eps:
                break
            P[where[i]] -= x[i]
            P[j] += x[i]
            where[i] = j
        return [Move(t.id, t.name, projects[home[i]], projects[where[i]])
                for i, t in enumerate(tasks) if where[i] != home[i]]
    # copy mode: a task is added to the target and stays where it is
    names: dict[str, set[int]] = {}
    for t in tasks:
        names.setdefault(t.name, set()).add(index[t.project_id])
    free = np.array([len(names[t.name]) == 1 for t in tasks])

    def cost(PP: Any) -> Any:
        tot = PP.sum(axis=-2, keepdims=True)
        share = np.divide(PP, tot, out=np.zeros_like(PP), where=tot > 0)
        return ((share - r[:, None]) ** 2).sum(axis=(-2, -1))

    moves: list[Move] = []
    current = cost(P)
    for _ in range(steps):
        best: tuple[float, int, int] = (0.0, -1, -1)
        for jj in range(k):
            cand = np.repeat(P[None], len(tasks), axis=0)
            cand[:, jj] += x
            gain = cost(cand) - current
            gain[(home == jj) | ~free] = 0.0
            ii = int(np.argmin(gain))
            if gain[ii] < best[0] - eps:
                best = (float(gain[ii]), ii, jj)
        if best[1] < 0:
            break
        _, ti, pj = best
        P[pj] += x[ti]
        current = cost(P)
        free[ti] = False
        moves.append(Move(tasks[ti].id, tasks[ti].name, projects[int(home[ti])], projects[pj]))
    return sorted(moves, key=lambda m: m.task_id)


@dataclass
class BalancePlan:
    """Counts before, the moves, and the counts they lead to."""

    options: BalanceOptions
    project_names: dict[int, str]
    tasks: list[TaskCounts]
    moves: list[Move]
    classes: list[str] = field(default_factory=list)
    applied: list[dict[str, Any]] = field(default_factory=list)
    after_read: dict[int, dict[str, int]] | None = None  # re-read from the server after --apply
    resumed: bool = False

    def __post_init__(self) -> None:
        if not self.classes:
            self.classes = sorted({c for t in self.tasks for c, n in t.counts.items() if n})

    def before(self) -> dict[int, dict[str, int]]:
        return project_totals(self.tasks, self.options.projects, self.classes)

    def expected(self) -> dict[int, dict[str, int]]:
        where = {t.id: [t.project_id] for t in self.tasks}
        for m in self.moves:
            if self.options.mode == "move":
                where[m.task_id] = [m.target]
            else:
                where[m.task_id] = where[m.task_id] + [m.target]
        return project_totals(self.tasks, self.options.projects, self.classes, where)

    def error(self, totals: dict[int, dict[str, int]]) -> float:
        """Largest gap, over classes and projects, between a share and its ratio."""
        worst = 0.0
        for c in self.classes:
            tot = sum(totals[p].get(c, 0) for p in self.options.projects)
            if not tot:
                continue
            for p, r in zip(self.options.projects, self.options.ratios):
                worst = max(worst, abs(totals[p].get(c, 0) / tot - r))
        return worst

    def table(self) -> str:
        """The class table: per project, count and share before -> after (expected or read)."""
        after = self.after_read if self.after_read is not None else self.expected()
        before = self.before()
        label = "after" if self.after_read is not None else "expected"
        head = ["class"] + [f"{p} {self.project_names.get(p, '')!r} target {r:.0%}"
                            for p, r in zip(self.options.projects, self.options.ratios)]
        rows = [head]
        for c in self.classes:
            tb = sum(before[p].get(c, 0) for p in self.options.projects) or 1
            ta = sum(after[p].get(c, 0) for p in self.options.projects) or 1
            rows.append([c] + [f"{before[p].get(c, 0)} {before[p].get(c, 0) / tb:.0%} -> "
                               f"{after[p].get(c, 0)} {after[p].get(c, 0) / ta:.0%}"
                               for p in self.options.projects])
        widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
        lines = ["  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip() for r in rows]
        lines.insert(1, "  ".join("-" * w for w in widths))
        lines.append(f"largest share gap: {self.error(before):.1%} before, {self.error(after):.1%} {label}")
        return "\n".join(lines)

    def summary(self) -> dict[str, Any]:
        after = self.after_read if self.after_read is not None else self.expected()
        return {"projects": list(self.options.projects), "ratios": list(self.options.ratios),
                "mode": self.options.mode, "classes": self.classes,
                "moves": [m.to_dict() for m in self.moves], "applied": self.applied,
                "resumed": self.resumed,
                "before": {str(p): v for p, v in self.before().items()},
                "after" if self.after_read is not None else "expected": {str(p): v for p, v in after.items()},
                "gap_before": self.error(self.before()), "gap_after": self.error(after)}

    def __str__(self) -> str:
        verb = "move" if self.options.mode == "move" else "copy"
        lines = []
        if not self.moves:
            lines.append("nothing to " + verb + ": no single task " + ("move" if verb == "move" else "copy")
                         + " brings the shares closer to the ratios")
        for m in self.moves:
            lines.append(f"{verb} task {m.task_id} {m.name!r}: project {m.source} -> {m.target}")
        for a in self.applied:
            lines.append(f"  task {a['task']}: {a['result']}")
        lines.append(self.table())
        return "\n".join(lines)


def make_plan(conn: CvatConnection, options: BalanceOptions, *, progress: bool = True) -> BalancePlan:
    """Read the projects and counts and plan (changes nothing)."""
    names = {p: str(get_project(conn, p).get("name") or "") for p in options.projects}
    tasks = read_counts(conn, options.projects, cache_dir=options.cache_dir, progress=progress)
    moves = plan_moves(tasks, options.projects, options.ratios, options.mode)
    return BalancePlan(options, names, tasks, moves)


# ------------------------------------------------------------------------------------ applying
def _plan_file(conn: CvatConnection, options: BalanceOptions) -> Path:
    key = json.dumps([conn.host, list(options.projects), list(options.ratios), options.mode])
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    return (options.cache_dir or default_cache_dir()) / f"balance-{digest}.json"


def _save_plan(path: Path, plan: BalancePlan, done: set[int], finished: bool) -> None:
    from ..formats._common import write_atomic

    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, json.dumps({
        "moves": [m.to_dict() for m in plan.moves], "done": sorted(done), "finished": finished,
        "tasks": [{"id": t.id, "name": t.name, "project": t.project_id, "counts": t.counts}
                  for t in plan.tasks]}, sort_keys=True))


def _load_plan(path: Path, plan: BalancePlan) -> tuple[list[Move], list[TaskCounts], set[int]] | None:
    """An unfinished plan saved by an earlier --apply, or None."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if data.get("finished"):
        return None
    try:
        moves = [Move(int(m["task"]), str(m["name"]), int(m["from"]), int(m["to"])) for m in data["moves"]]
        tasks = [TaskCounts(int(t["id"]), str(t["name"]), int(t["project"]),
                            {str(k): int(v) for k, v in t["counts"].items()}) for t in data["tasks"]]
        return moves, tasks, {int(i) for i in data.get("done", [])}
    except (KeyError, TypeError, ValueError):
        return None


def _label_key(lb: dict) -> tuple:
    return tuple(sorted((str(a.get("name")), str(a.get("input_type")), tuple(a.get("values") or []))
                        for a in lb.get("attributes") or []))


def check_labels(conn: CvatConnection, moves: Sequence[Move], names: dict[int, str], *,
                 create: bool = False) -> list[str]:
    """Refuse (or with ``create`` add) what CVAT would refuse: a target project lacking a label of
    a moved task's project (all of them, used or not, matched by name, with their attributes).

    Returns what was created (``"project P: label L"``); raises before anything moves otherwise.
    """
    pairs = sorted({(m.source, m.target) for m in moves})
    labels = {p: project_labels(conn, p) for p in sorted({q for pr in pairs for q in pr})}
    created: list[str] = []
    for target in sorted({t for _, t in pairs}):
        have = {lb["name"]: lb for lb in labels[target]}
        missing: dict[str, dict] = {}
        bad_attrs: list[str] = []
        for src in sorted({s for s, t in pairs if t == target}):
            for lb in labels[src]:
                other = have.get(lb["name"])
                if other is None:
                    missing.setdefault(lb["name"], lb)
                elif not set(_label_key(lb)) <= set(_label_key(other)):
                    bad_attrs.append(f"{lb['name']!r}")
        if bad_attrs:
            raise cvat_error(f"project {target} ({names.get(target, '')!r}) has label(s) {', '.join(sorted(set(bad_attrs)))}"
                             " with other attributes than the projects the plan moves tasks from; make"
                             " the attributes equal in CVAT; nothing was moved")
        if not missing:
            continue
        if not create:
            tasks = sorted({m.name for m in moves if m.target == target})
            raise cvat_error(
                f"project {target} ({names.get(target, '')!r}) lacks the label(s)"
                f" {', '.join(repr(n) for n in sorted(missing))} of the project(s) the plan moves tasks"
                f" {', '.join(repr(t) for t in tasks[:5])}{' ...' if len(tasks) > 5 else ''} from (CVAT"
                " needs every label by name); add them (`dl-utils cvat labels --project"
                f" {target} ...`) or pass --create-labels; nothing was moved")
        specs = []
        for name in sorted(missing):
            lb = missing[name]
            specs.append({"name": name, "color": lb.get("color") or "", "type": lb.get("type") or "any",
                          "attributes": [{"name": a["name"], "mutable": bool(a.get("mutable")),
                                          "input_type": a.get("input_type", "text"),
                                          "default_value": str(a.get("default_value", "")),
                                          "values": list(a.get("values") or [])}
                                         for a in lb.get("attributes") or []]})
            if not specs[-1]["color"]:
                del specs[-1]["color"]
        conn.request("PATCH", f"/api/projects/{target}", body={"labels": specs},
                     what=f"adding {len(specs)} label(s) to project {target}")
        created += [f"project {target}: label {s['name']!r}" for s in specs]
    return created


class StalePlanError(CvatError):
    """A planned task is no longer where the plan expects it (moved by someone else)."""


def _move_one(conn: CvatConnection, m: Move) -> str:
    task = conn.request("GET", f"/api/tasks/{m.task_id}", what=f"reading task {m.task_id}") or {}
    now = task.get("project_id")
    if now == m.target:
        return "already in the target project"
    if now != m.source:
        raise StalePlanError(cvat_error(
            f"task {m.task_id} ({m.name!r}) is now in project {now}, not {m.source} as planned"
            " (moved by someone else); the saved plan was dropped: run the command again without"
            " --apply to see a new plan").args[0])
    conn.request("PATCH", f"/api/tasks/{m.task_id}", body={"project_id": m.target},
                 what=f"moving task {m.task_id} to project {m.target}")
    return "moved"


def _copy_one(conn: CvatConnection, m: Move, workdir: Path) -> str:
    in_target = {str(t.get("name")) for t in project_tasks(conn, m.target)}
    if m.name in in_target:
        return "a task of that name is already in the target project"
    try:
        from .transfer import backup_task, restore_task
    except ImportError as e:
        raise cvat_error(f"--mode copy needs dl_utils.cvat.transfer (backup_task, restore_task): {e}") from None
    backup = backup_task(conn, m.task_id, workdir / f"task_{m.task_id}.zip")
    new_id = restore_task(conn, Path(backup), project_id=m.target)
    task = conn.request("GET", f"/api/tasks/{int(new_id)}", what=f"reading task {new_id}") or {}
    if task.get("project_id") != m.target:
        conn.request("PATCH", f"/api/tasks/{int(new_id)}", body={"project_id": m.target},
                     what=f"moving task {new_id} to project {m.target}")
    if task.get("name") != m.name:
        conn.request("PATCH", f"/api/tasks/{int(new_id)}", body={"name": m.name},
                     what=f"naming task {new_id} {m.name!r}")
    return f"copied as task {new_id}"


def balance(conn: CvatConnection, options: BalanceOptions, *, apply: bool = False,
            progress: bool = True) -> BalancePlan:
    """Plan, and with ``apply`` carry the plan out (resuming an unfinished one); never deletes."""
    import tempfile

    plan = make_plan(conn, options, progress=progress)
    if not apply:
        return plan
    path = _plan_file(conn, options)
    saved = _load_plan(path, plan)
    done: set[int] = set()
    if saved is not None:
        moves, tasks, done = saved
        # resume only a plan the server still fits: every planned task where the plan left it
        # (a move: its source or target; a copy: its source), else plan anew from what is there
        now = {t.id: t.project_id for t in plan.tasks}
        fits = all(now.get(m.task_id) in ((m.source, m.target) if options.mode == "move" else (m.source,))
                   for m in moves)
        if fits:
            plan.moves, plan.tasks, plan.resumed = moves, tasks, True
            plan.classes = sorted({c for t in tasks for c, n in t.counts.items() if n})
        else:
            done = set()
    created = check_labels(conn, [m for m in plan.moves if m.task_id not in done], plan.project_names,
                           create=options.create_labels)
    plan.applied += [{"task": None, "result": f"created {c}"} for c in created]
    _save_plan(path, plan, done, finished=False)
    with tempfile.TemporaryDirectory(prefix="dl_utils_balance_") as tmp:
        from tqdm.auto import tqdm

        for m in tqdm(plan.moves, desc=f"{options.mode} tasks", unit="task",
                      disable=not progress or not plan.moves):
            if options.mode == "move":
                try:
                    result = _move_one(conn, m)
                except StalePlanError:
                    path.unlink(missing_ok=True)  # our own plan file: the next run plans anew
                    raise
            else:
                result = "already done" if m.task_id in done else _copy_one(conn, m, Path(tmp))
            done.add(m.task_id)
            plan.applied.append({"task": m.task_id, "result": result})
            _save_plan(path, plan, done, finished=False)
    _save_plan(path, plan, done, finished=True)
    after = read_counts(conn, options.projects, cache_dir=options.cache_dir, progress=progress)
    plan.after_read = project_totals(after, options.projects, plan.classes)
    return plan


__all__ = ["BalanceOptions", "BalancePlan", "MODES", "Move", "StalePlanError", "TaskCounts", "balance",
           "check_labels", "count_annotations", "default_cache_dir", "make_plan", "parse_ids",
           "parse_ratios", "plan_moves", "project_totals", "read_counts"]
