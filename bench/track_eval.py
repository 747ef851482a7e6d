"""Success / precision AUC (the LaSOT protocol) of one or more stores against a ground-truth box file.

Why: SAMURAI's gains are published on LaSOT-style benchmarks; with weights at hand, users compare
``--tracker sam2`` and ``--tracker samurai`` on their own footage by tracking the same object twice
(two stores) and scoring both against boxes they trust. The metric code is
``bench/track_metrics.py`` (protocol, thresholds and exclusions documented there and in
docs/sam2al_samurai.md).

    python bench/track_eval.py sam2.sqlite samurai.sqlite --gt groundtruth.txt \\
        [--object ID] [--first-frame N] [--absent full_occlusion.txt --absent out_of_view.txt] \\
        [--json] [--plot success.png]

Ground truth:

* LaSOT ``groundtruth.txt``: one ``x,y,w,h`` per line (commas, or tabs/spaces as OTB writes them).
  Line k is the store's k-th frame (``MediaInfo.frames``, shot numbers included) unless
  ``--first-frame N`` numbers line 1 as frame N. ``--absent`` files (LaSOT's ``full_occlusion.txt``
  and ``out_of_view.txt``: one 0/1 per frame, on one line or one per line) exclude the flagged frames.
* JSON ``{"<frame>": [x1, y1, x2, y2] | null}`` in the store's frame numbers (right/bottom
  exclusive, like the store's boxes); ``null``, a box without area or NaN excludes the frame.

The predicted box of a frame is the stored instance's box (the mask's tight box for a mask). One row
per store: frames evaluated, excluded, missing, success AUC, precision at 20 px, normalised
precision AUC. Errors are one line (``track_eval: error: ...``) with exit status 2.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import re
import sys
from pathlib import Path
from typing import Any, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/ is not a package
sys.path.insert(1, str(Path(__file__).resolve().parent.parent))  # dl_utils from this checkout

import track_metrics as tm  # noqa: E402

from dl_utils.errors import DlUtilsError, InputError  # noqa: E402
from dl_utils.formats._common import write_atomic  # noqa: E402
from dl_utils.store import AnnotationStore  # noqa: E402

GroundTruth = dict[int, "tm.XYWH | None"]


def _numbers(text: str) -> list[str]:
    return [t for t in re.split(r"[,\s]+", text.strip()) if t]


def read_absent(path: Path, n: int) -> list[int]:
    """Line positions (0-based) flagged 1 in a LaSOT absent file of ``n`` flags."""
    try:
        tokens = _numbers(path.read_text())
    except OSError as e:
        raise InputError(f"cannot read --absent file {path}: {e.strerror or e}") from None
    if len(tokens) != n:
        raise InputError(f"{path} has {len(tokens)} flags but the ground truth has {n} boxes;"
                         " give the absent file of the same sequence")
    flags = []
    for k, t in enumerate(tokens):
        if t not in ("0", "1"):
            raise InputError(f"{path}: flag {k + 1} is {t!r}, not 0 or 1")
        flags.append(t == "1")
    return [k for k, f in enumerate(flags) if f]


def read_gt_text(path: Path, frames: Sequence[int], first_frame: int | None, store: str,
                 absent: Sequence[Path] = ()) -> tuple[GroundTruth, list[int]]:
    """A LaSOT ``groundtruth.txt``: frame -> ``(x, y, w, h)``, and the frames the absent files flag."""
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"cannot read ground truth {path}: {getattr(e, 'strerror', None) or e}") from None
    while lines and not lines[-1].strip():
        lines.pop()
    boxes: list[tm.XYWH] = []
    for k, line in enumerate(lines, 1):
        tokens = _numbers(line)
        try:
            vals = [float(t) for t in tokens]
        except ValueError:
            vals = []
        if len(vals) != 4:
            raise InputError(f"{path} line {k}: {line.strip()[:40]!r} is not 4 numbers x,y,w,h (a LaSOT"
                             " groundtruth.txt has one box per line; JSON ground truth needs a .json name)")
        boxes.append((vals[0], vals[1], vals[2], vals[3]))
    if not boxes:
        raise InputError(f"{path} holds no box; a LaSOT groundtruth.txt has one x,y,w,h per line")
    if first_frame is None:
        if len(boxes) != len(frames):
            raise InputError(
                f"{path} has {len(boxes)} boxes but {store} has {len(frames)} frames; line k is the"
                " store's k-th frame: give one box per frame, or --first-frame N to number line 1 as"
                " frame N")
        numbers = list(frames)
    else:
        numbers = [first_frame + k for k in range(len(boxes))]
    gt: GroundTruth = dict(zip(numbers, boxes))
    flagged: set[int] = set()
    for a in absent:
        flagged.update(numbers[k] for k in read_absent(a, len(boxes)))
    return gt, sorted(flagged)


def read_gt_json(path: Path) -> GroundTruth:
    """``{"frame": [x1, y1, x2, y2] | null}`` as frame -> ``(x, y, w, h)`` (None: no box)."""
    try:
        doc = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"cannot read ground truth {path}: {getattr(e, 'strerror', None) or e}") from None
    except ValueError as e:
        raise InputError(f"{path} is not valid JSON ({e}); write {{\"frame\": [x1, y1, x2, y2]}}") from None
    if not isinstance(doc, dict) or not doc:
        raise InputError(f"{path}: the JSON ground truth must be a non-empty object"
                         " {\"frame\": [x1, y1, x2, y2] or null}")
    gt: GroundTruth = {}
    for key, v in doc.items():
        try:
            frame = int(key)
        except ValueError:
            raise InputError(f"{path}: key {key!r} is not a frame number") from None
        if v is None:
            gt[frame] = None
            continue
        if (not isinstance(v, list) or len(v) != 4
                or not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in v)):
            raise InputError(f"{path}: frame {frame}: {json.dumps(v)[:40]} is not [x1, y1, x2, y2] or null")
        if not all(math.isfinite(x) for x in v):
            gt[frame] = (math.nan, math.nan, math.nan, math.nan)  # excluded, as the protocol says
            continue
        gt[frame] = tm.corners_to_xywh(v)
    return gt


def read_gt(path: str | Path, frames: Sequence[int], *, first_frame: int | None = None,
            absent: Sequence[str | Path] = (), store: str = "the store") -> tuple[GroundTruth, list[int]]:
    """Ground truth of either format (``.json`` name or ``{`` first: JSON) and the absent frames."""
    p = Path(path)
    if not p.is_file():
        raise InputError(f"ground truth {p} does not exist or is not a file; check --gt")
    head = p.read_bytes()[:64].lstrip()
    if p.suffix.lower() == ".json" or head.startswith(b"{"):
        if absent:
            raise InputError("--absent flags lines of a LaSOT groundtruth.txt; in JSON ground truth"
                             " write null for the frames to leave out")
        if first_frame is not None:
            raise InputError("--first-frame numbers the lines of a groundtruth.txt; JSON ground truth"
                             " already names its frames")
        return read_gt_json(p), []
    return read_gt_text(p, frames, first_frame, store, [Path(a) for a in absent])


def predictions(store: AnnotationStore, object_id: int) -> dict[int, tm.XYWH | None]:
    """Frame -> the object's stored box as ``(x, y, w, h)`` (None where it is not visible)."""
    out: dict[int, tm.XYWH | None] = {}
    for frame, inst in store.read_object(object_id, decode=False).items():
        out[frame] = None if inst.is_empty or inst.box is None else tm.corners_to_xywh(inst.box)
    return out


def pick_object(store: AnnotationStore, wanted: int | None) -> int:
    ids = [o.id for o in store.objects()]
    if wanted is not None:
        if wanted not in ids:
            raise InputError(f"{store.path} has no object {wanted}; its objects are {ids}")
        return wanted
    if len(ids) != 1:
        raise InputError(f"{store.path} holds {len(ids)} objects {ids[:10]}; choose one with --object ID")
    return ids[0]


def evaluate_store(path: str | Path, gt_path: str | Path, *, object_id: int | None = None,
                   first_frame: int | None = None, absent: Sequence[str | Path] = ()) -> dict[str, Any]:
    """Scores of one store: the row the CLI prints (``TrackScores.to_json`` plus store/object)."""
    p = Path(path)
    if not p.is_file():
        raise InputError(f"store {p} does not exist or is not a file")
    with AnnotationStore.open(p, readonly=True) as st:
        media = st.media
        if media is None:
            raise InputError(f"{p} has no media info (frame numbers); it is not an annotated store")
        oid = pick_object(st, object_id)
        gt, flagged = read_gt(gt_path, media.frames, first_frame=first_frame, absent=absent, store=str(p))
        on_store = set(gt) & set(media.frames)
        if not on_store:
            g = sorted(gt)
            raise InputError(
                f"none of the {len(g)} ground-truth frames ({g[0]}..{g[-1]}) is a frame of {p}"
                f" ({media.frames[0]}..{media.frames[-1]}, {media.numbering_text()}); check"
                " --first-frame or the JSON's frame numbers")
        pred = predictions(st, oid)
    err = tm.frame_errors(pred, gt, flagged)
    if not err.frames:
        raise InputError(f"every ground-truth box of {gt_path} is excluded (absent, empty or NaN);"
                         " nothing to evaluate")
    row: dict[str, Any] = {"store": str(p), "object": oid}
    row.update(tm.scores(err).to_json())
    return row


def _labels(rows: Sequence[dict[str, Any]]) -> list[str]:
    """Store file names, or full paths where two names are the same."""
    names = [Path(r["store"]).name for r in rows]
    return [r["store"] if names.count(n) > 1 else n for r, n in zip(rows, names)]


def table(rows: Sequence[dict[str, Any]]) -> str:
    labels = _labels(rows)
    w = max(len("store"), *(len(lb) for lb in labels))
    head = (f"{'store':<{w}}  object  frames  excluded  missing  success AUC  precision@20"
            "  norm. precision AUC")
    lines = [head]
    for lb, r in zip(labels, rows):
        lines.append(f"{lb:<{w}}  {r['object']:>6}  {r['frames']:>6}  {r['excluded']:>8}  {r['missing']:>7}"
                     f"  {r['success_auc']:>11.3f}  {r['precision_20']:>12.3f}  {r['norm_precision_auc']:>19.3f}")
    return "\n".join(lines)


def plot(rows: Sequence[dict[str, Any]], out: str | Path) -> Path:
    """Success plots of every store in one PNG (legend: name [AUC], as LaSOT draws them)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4.5))
    for lb, r in zip(_labels(rows), rows):
        ax.plot(tm.IOU_THRESHOLDS, r["success_curve"], label=f"{lb} [{r['success_auc']:.3f}]")
    ax.set_xlabel("overlap threshold (IoU)")
    ax.set_ylabel("success rate")
    ax.set_title("Success plot of OPE")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.grid(True, alpha=0.3)
    ax.legend(loc="lower left")
    fig.tight_layout()
    out = Path(out)
    buf = io.BytesIO()
    try:
        fig.savefig(buf, format="png", dpi=100)
    finally:
        plt.close(fig)
    try:  # written then renamed: a kill or a full disk leaves an earlier plot as it was
        write_atomic(out, buf.getvalue())
    except DlUtilsError as e:
        raise InputError(f"cannot write --plot {out}: {e}") from None
    return out


def _matplotlib() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="track_eval", description=__doc__.split("\n\n")[0])
    ap.add_argument("stores", nargs="+", metavar="STORE", help="annotation stores (one row each)")
    ap.add_argument("--gt", required=True, metavar="FILE",
                    help="groundtruth.txt (x,y,w,h per line) or JSON {frame: [x1,y1,x2,y2]}")
    ap.add_argument("--object", type=int, default=None, metavar="ID",
                    help="object to score (needed when a store holds several)")
    ap.add_argument("--first-frame", type=int, default=None, metavar="N",
                    help="frame number of the groundtruth.txt's first line (default: the store's frames in order)")
    ap.add_argument("--absent", action="append", default=[], metavar="FILE",
                    help="LaSOT full_occlusion.txt / out_of_view.txt: flagged frames are left out (repeatable)")
    ap.add_argument("--json", action="store_true", help="print the rows and curves as JSON")
    ap.add_argument("--plot", metavar="PNG", help="draw the success plots (needs matplotlib)")
    args = ap.parse_args(argv)
    try:
        if args.first_frame is not None and args.first_frame < 0:
            raise InputError(f"--first-frame {args.first_frame} is below 0")
        if args.plot and not _matplotlib():
            raise InputError("--plot needs matplotlib, which this environment lacks; install it"
                             " (pip install matplotlib) or leave --plot out")
        rows = [evaluate_store(s, args.gt, object_id=args.object, first_frame=args.first_frame,
                               absent=args.absent) for s in args.stores]
        if args.plot:
            plot(rows, args.plot)
    except DlUtilsError as e:
        print(f"track_eval: error: {e}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps({"thresholds": {"iou": [float(v) for v in tm.IOU_THRESHOLDS],
                                         "pixels": [float(v) for v in tm.PIXEL_THRESHOLDS],
                                         "normalized": [float(v) for v in tm.NORM_THRESHOLDS]},
                          "precision_at": tm.PRECISION_AT, "stores": rows}))
    else:
        print(table(rows))
        if args.plot:
            print(f"success plot: {args.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
