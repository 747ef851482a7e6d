"""dl_utils.sam2al SAMURAI mode: the configuration, the filter and rules against references written
here from the paper's equations, and the engine fed the same model outputs agreeing with them frame
by frame (tiny random-weight SAM2 at 128 px, CPU).

Method: a session in samurai mode is instrumented from outside (a forward hook on the mask decoder
captures the three candidates, their predicted IoUs and the object score of every tracked frame; a
wrapper on the engine's per-frame call records which memory frames and which candidate the engine
used). An independent reference (numpy Kalman filter in matrix form, the weighted choice, the
admission thresholds, the memory rule) replays those outputs and must reach the same candidate, the
same memory frames and masks equal to the stored ones, on every frame, both directions, two objects.

A random-weight network makes near full-frame masks, so the synthetic clip (two look-alike disks
crossing) cannot show "better"; it shows "on": with the disks given as mask prompts, the filter
predicts a small box and the motion-weighted choice keeps other candidates than SAM2's argmax, and
the motion threshold keeps frames out of the memory bank that SAM2 would read.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from dl_utils.errors import InputError
from dl_utils.store import AnnotationStore
from tests.sam2_fixtures import HAVE_SAM2, SKIP_REASON, build_tiny

pytestmark = [pytest.mark.filterwarnings("ignore::UserWarning"), pytest.mark.filterwarnings("ignore::FutureWarning")]
needs_sam2 = pytest.mark.skipif(not HAVE_SAM2, reason=SKIP_REASON)

SIZE = 128  # model input size: keeps the CPU runs short
N, W, H = 8, 160, 120
PROMPT = 2  # both objects are prompted here; "both" tracks 3..7 forward and 1..0 backward
RADIUS = 18


# ----------------------------------------------------------------------------- references (paper's equations)
class RefKalman:
    """x_{k+1} = F x_k + w, z_k = H x_k + v; state (cx, cy, a, h, vcx, vcy, va, vh), noise scaled by h."""

    def __init__(self, p=1 / 20, v=1 / 160):
        self.p, self.v = p, v
        self.F = np.block([[np.eye(4), np.eye(4)], [np.zeros((4, 4)), np.eye(4)]])
        self.H = np.hstack([np.eye(4), np.zeros((4, 4))])

    def init(self, z):
        h = z[3]
        sd = [2 * self.p * h] * 2 + [1e-2, 2 * self.p * h] + [10 * self.v * h] * 2 + [1e-5, 10 * self.v * h]
        return np.concatenate([z, np.zeros(4)]), np.diag(np.square(sd))

    def predict(self, x, P):
        h = x[3]
        Q = np.diag(np.square([self.p * h] * 2 + [1e-2, self.p * h] + [self.v * h] * 2 + [1e-5, self.v * h]))
        return self.F.dot(x), self.F.dot(P).dot(self.F.T) + Q

    def update(self, x, P, z):
        h = x[3]
        R = np.diag(np.square([self.p * h, self.p * h, 1e-1, self.p * h]))
        S = self.H.dot(P).dot(self.H.T) + R
        K = P.dot(self.H.T).dot(np.linalg.inv(S))
        return x + K.dot(z - self.H.dot(x)), (np.eye(8) - K.dot(self.H)).dot(P).dot((np.eye(8) - K.dot(self.H)).T) \
            + K.dot(R).dot(K.T)  # Joseph form: same posterior, written differently on purpose


def xyah(b):
    w, h = b[2] - b[0], b[3] - b[1]
    return np.array([b[0] + w / 2, b[1] + h / 2, w / h, h])


def xyxy(m):
    w = m[2] * m[3]
    return (m[0] - w / 2, m[1] - m[3] / 2, m[0] + w / 2, m[1] + m[3] / 2)


def iou(a, b):
    if a is None or b is None:
        return 0.0
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    u = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - ix * iy
    return ix * iy / u if u > 0 else 0.0


def box_of(mask):
    ys, xs = np.nonzero(mask)
    return None if ys.size == 0 else (float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1))


class RefTrack:
    """The paper's motion modelling and mask selection, written out: init -> warm -> stable."""

    def __init__(self, cfg):
        self.cfg, self.kf = cfg, RefKalman(cfg.std_weight_position, cfg.std_weight_velocity)
        self.x = self.P = None
        self.n = 0

    def reinit(self, box):
        self.x, self.P = (None, None) if box is None else self.kf.init(xyah(box))
        self.n = 0 if box is None else 1

    def step(self, ious, boxes):
        """-> (chosen index, motion score or None, phase); predicts first when the filter runs."""
        if self.x is None or self.n == 0:
            return int(np.argmax(ious)), None, "init"
        self.x, self.P = self.kf.predict(self.x, self.P)
        if self.n < self.cfg.stable_frames_threshold:
            return int(np.argmax(ious)), None, "warm"
        pred = xyxy(self.x)
        kf = [iou(pred, b) for b in boxes]
        score = [self.cfg.kf_score_weight * k + (1 - self.cfg.kf_score_weight) * s for k, s in zip(kf, ious)]
        i = int(np.argmax(score))
        return i, kf[i], "stable"

    def measure(self, phase, box, s):
        t = self.cfg.stable_ious_threshold
        if box is None:
            return
        if phase == "init":
            self.reinit(box)
        elif phase == "warm":
            if s > t:
                self.x, self.P = self.kf.update(self.x, self.P, xyah(box))
                self.n += 1
            else:
                self.n = 0
        elif s < t:
            self.n = 0
        else:
            self.x, self.P = self.kf.update(self.x, self.P, xyah(box))


def ref_memory(f, behind, admitted, slots, reverse):
    """The num_maskmem - 1 latest of (admitted frames behind f) + the previous frame."""
    prev = f + 1 if reverse else f - 1
    pool = sorted({g for g in behind if (g > f if reverse else g < f) and admitted[g]} | {prev},
                  key=lambda g: -g if reverse else g)
    return pool[-slots:]


# ----------------------------------------------------------------------------- pure parts
def test_config_defaults_are_the_reference_implementations_and_validated():
    from dl_utils.sam2al import SamuraiConfig

    c = SamuraiConfig()
    assert (c.stable_frames_threshold, c.stable_ious_threshold, c.min_obj_score_logits, c.kf_score_weight,
            c.memory_bank_iou_threshold, c.memory_bank_obj_score_threshold, c.memory_bank_kf_score_threshold,
            c.std_weight_position, c.std_weight_velocity) == (15, 0.3, -1.0, 0.25, 0.5, 0.0, 0.0, 1 / 20, 1 / 160)
    assert SamuraiConfig.from_dict(c.to_dict()) == c
    assert SamuraiConfig.from_dict(SamuraiConfig(memory_bank_obj_score_threshold=-math.inf).to_dict()) \
        .memory_bank_obj_score_threshold == -math.inf
    bad = {"stable_frames_threshold": [0, 1.5, True], "stable_ious_threshold": [-0.1, 1.1],
           "min_obj_score_logits": [math.nan, "x"], "kf_score_weight": [-0.01, 1.01],
           "memory_bank_iou_threshold": [1.5, -2], "memory_bank_obj_score_threshold": [math.nan],
           "memory_bank_kf_score_threshold": [2.0], "std_weight_position": [0, -1, math.inf],
           "std_weight_velocity": [0.0]}
    for name, values in bad.items():
        for v in values:
            with pytest.raises(InputError, match=rf"samurai {name}=.* out of range: give") as e:
                SamuraiConfig(**{name: v})
            assert "\n" not in str(e.value)
    with pytest.raises(InputError, match="unknown"):
        SamuraiConfig.from_dict({"kf_weight": 0.1})


def test_kalman_filter_equals_the_matrix_form():
    from dl_utils.sam2al import BoxKalmanFilter

    rng = np.random.default_rng(0)
    ours, ref = BoxKalmanFilter(), RefKalman()
    z = np.array([50.0, 40.0, 0.8, 30.0])
    a, b = ours.initiate(z), ref.init(z)
    for _ in range(40):
        a, b = ours.predict(*a), ref.predict(*b)
        np.testing.assert_allclose(a[0], b[0], rtol=1e-12, atol=1e-9)
        np.testing.assert_allclose(a[1], b[1], rtol=1e-9, atol=1e-9)
        z = z + np.r_[rng.normal(2, 1, 2), rng.normal(0, 0.01), rng.normal(0, 0.5)]
        a, b = ours.update(*a, z), ref.update(*b, z)
        np.testing.assert_allclose(a[0], b[0], rtol=1e-9, atol=1e-7)
        np.testing.assert_allclose(a[1], b[1], rtol=1e-7, atol=1e-7)
    assert abs(a[0][4] - 2) < 0.6  # the velocity was learnt from the measurements


def test_motion_track_phases_and_choice_equal_the_reference():
    from dl_utils.sam2al import MotionTrack, SamuraiConfig

    rng = np.random.default_rng(3)
    cfg = SamuraiConfig(stable_frames_threshold=3, kf_score_weight=0.6)
    ours, ref = MotionTrack(cfg), RefTrack(cfg)
    box = (20.0, 30.0, 50.0, 70.0)
    ours.reinit(box)
    ref.reinit(box)
    phases = []
    for k in range(60):
        shift = 3.0 * k
        cands = [(20 + shift + rng.normal(0, 4), 30 + rng.normal(0, 2), 50 + shift + rng.normal(0, 4), 70 + rng.normal(0, 2))
                 for _ in range(3)]
        cands[rng.integers(3)] = (100.0, 0.0, 140.0, 40.0) if k % 7 else None  # a distractor / empty candidate
        ious = rng.uniform(0.1, 0.9, 3)
        ours.begin_frame()
        ch = ours.choose(ious, lambda: cands)
        i, kf, phase = ref.step(ious, cands)
        assert (ch.index, ours.phase) == (i, phase), k
        assert ch.kf_score == (None if kf is None else pytest.approx(kf, abs=1e-9)), k
        chosen = None if k % 11 == 5 else cands[i]  # now and then the object is absent
        ours.measure(chosen, ch.iou)
        ref.measure(phase, chosen, ious[i])
        assert ours.stable_frames == ref.n
        if ref.x is not None:
            np.testing.assert_allclose(ours.mean, ref.x, rtol=1e-9, atol=1e-6)
        phases.append(phase)
    assert {"init", "warm", "stable"} <= set(phases)  # every branch was taken


def test_memory_rule_and_admission():
    from dl_utils.sam2al import SamuraiConfig
    from dl_utils.sam2al.samurai import admits, memory_frames

    cfg = SamuraiConfig()
    assert admits(cfg, 0.6, 0.1, None) and admits(cfg, 0.6, 0.1, 0.2)
    assert not admits(cfg, 0.5, 0.1, 0.2) and not admits(cfg, 0.6, 0.0, 0.2) and not admits(cfg, 0.6, 0.1, 0.0)
    rng = np.random.default_rng(1)
    for _ in range(200):
        f = int(rng.integers(1, 40))
        rev = bool(rng.integers(2))
        behind = [g for g in range(0, 60) if rng.random() < 0.8]
        adm = {g: bool(rng.random() < 0.5) for g in behind}
        assert memory_frames(f, behind, adm, 6, rev) == ref_memory(f, behind, adm, 6, rev)


# ----------------------------------------------------------------------------- the engine on a synthetic clip
def _centres(i):
    t = i / (N - 1)
    return (30 + 100 * t, 56), (130 - 100 * t, 64)  # A left->right, its look-alike B right->left


def _disk(i, which):
    y, x = np.mgrid[0:H, 0:W]
    cx, cy = _centres(i)[which]
    return (x - cx) ** 2 + (y - cy) ** 2 < RADIUS**2


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    from PIL import Image

    out = tmp_path_factory.mktemp("crossing")
    y, x = np.mgrid[0:H, 0:W]
    bg = np.stack([x * 255 // (W - 1), y * 255 // (H - 1), (x + y) % 256], -1).astype(np.uint8)
    for i in range(N):
        img = bg.copy()
        for which in (0, 1):  # identical white rings: look-alikes
            cx, cy = _centres(i)[which]
            img[_disk(i, which)] = 255
            img[(x - cx) ** 2 + (y - cy) ** 2 < 9**2] = 0
        Image.fromarray(img).save(out / f"{i:05d}.png")
    return out


@pytest.fixture(scope="module")
def model():
    return build_tiny(image_size=SIZE, video=True)


TEST_CFG = dict(stable_frames_threshold=1, kf_score_weight=1.0, memory_bank_kf_score_threshold=0.5)
NEUTRAL = dict(kf_score_weight=0.0, min_obj_score_logits=0.0, memory_bank_iou_threshold=-1.0,
               memory_bank_obj_score_threshold=-math.inf, memory_bank_kf_score_threshold=-1.0)


def _session(clip, path, model, objects=(1, 2), **kw):
    from dl_utils.sam2al import VideoSession

    store = AnnotationStore.create(path, overwrite=True) if not Path(path).exists() else AnnotationStore.open(path)
    ses = VideoSession(clip, store, sam_model=model, **kw)
    for oid in objects:
        if not ses.store.read_frame(PROMPT).by_object().get(oid):
            ses.add_mask(PROMPT, oid, _disk(PROMPT, oid - 1), label=f"ring{oid}")
    return ses


class Recorder:
    """What the engine saw and decided on every tracked frame: (reverse, frame, object) -> record."""

    def __init__(self, ses):
        self.rows: list[dict] = []
        eng = ses.engine
        cap: list = []
        self._hook = eng.sam_mask_decoder.register_forward_hook(
            lambda m, i, o: cap.append((o[0].detach().float().clone(), o[1].detach().float().cpu().numpy()[0],
                                        float(o[3].float().reshape(-1)[0]))))
        orig = eng._run_single_frame_inference
        ids = {id(d): st for st, d in ses.state["output_dict_per_obj"].items()}

        def run(**kw):
            cap.clear()
            call = eng.dl_samurai
            out = orig(**kw)
            oid = ses.state["obj_idx_to_id"][ids[id(kw["output_dict"])]]
            (low, ious, obj), = cap
            self.rows.append({"frame": kw["frame_idx"], "reverse": kw["reverse"], "oid": oid, "low": low,
                              "ious": ious, "obj": obj, "memory": None if call is None else list(call.memory),
                              "choice": None if call is None else call.choice.index,
                              "kf": None if call is None else call.choice.kf_score})
            return out

        eng._run_single_frame_inference = run

    def close(self):
        self._hook.remove()


def _masks(store, objects=(1, 2)):
    return {(f, o): store.read_frame(f).by_object()[o].mask for f in range(N) for o in objects}


def _candidate_masks(low, hw, min_obj, obj):
    import torch

    x = low if obj > min_obj else torch.full_like(low, -1024.0)
    m = torch.nn.functional.interpolate(x[0][:, None], size=hw, mode="bilinear", align_corners=False)[:, 0] > 0
    return m.numpy()


@pytest.fixture(scope="module")
def plain(clip, model, tmp_path_factory):
    path = tmp_path_factory.mktemp("plain") / "s.sqlite"
    ses = _session(clip, path, model)
    rec = Recorder(ses)
    ses.propagate("both", progress=False)
    rec.close()
    return ses, rec.rows


@pytest.fixture(scope="module")
def samurai(clip, model, tmp_path_factory):
    from dl_utils.sam2al import SamuraiConfig

    path = tmp_path_factory.mktemp("samurai") / "s.sqlite"
    cfg = SamuraiConfig(**TEST_CFG)
    ses = _session(clip, path, model, tracker="samurai", samurai=cfg)
    rec = Recorder(ses)
    ses.propagate("both", progress=False)
    rec.close()
    return ses, rec.rows, cfg


@needs_sam2
@pytest.mark.slow
def test_engine_agrees_with_the_reference_frame_by_frame(samurai):
    ses, rows, cfg = samurai
    tracks: dict = {}
    admitted: dict = {}
    seen = {"choice": 0, "memory": 0, "stable": 0}
    for r in rows:
        key = (r["oid"], r["reverse"])
        if key not in tracks:  # a pass starts on the prompted frame: the filter starts from its mask
            tracks[key] = RefTrack(cfg)
            tracks[key].reinit(box_of(ses.store.read_frame(PROMPT).by_object()[r["oid"]].mask))
            admitted[key] = {}
        t, f = tracks[key], r["frame"]
        cands = _candidate_masks(r["low"], (H, W), cfg.min_obj_score_logits, r["obj"])
        behind = list(admitted[key])
        assert r["memory"] == ref_memory(f, behind, admitted[key], 6, r["reverse"]), r["frame"]
        i, kf, phase = t.step(r["ious"], [box_of(m) for m in cands])
        assert r["choice"] == i, (f, r["oid"], phase)
        assert r["kf"] == (None if kf is None else pytest.approx(kf, abs=1e-9)), (f, r["oid"])
        stored = ses.store.read_frame(f).by_object()[r["oid"]]
        assert np.array_equal(stored.mask, cands[i]), (f, r["oid"])
        assert stored.provenance.extra["samurai_candidate"] == i
        adm = float(r["ious"][i]) > cfg.memory_bank_iou_threshold and r["obj"] > cfg.memory_bank_obj_score_threshold \
            and (kf is None or kf > cfg.memory_bank_kf_score_threshold)
        admitted[key][f] = adm
        assert stored.provenance.extra["samurai_memory"] == adm
        t.measure(phase, box_of(stored.mask), float(r["ious"][i]))
        seen[phase] = seen.get(phase, 0) + 1
        seen["choice"] += i != int(np.argmax(r["ious"]))
        sam2_window = [g for g in (f + k if r["reverse"] else f - k for k in range(6, 0, -1)) if g in admitted[key]]
        seen["memory"] += [g for g in r["memory"] if g in admitted[key]] != sam2_window
    assert len(rows) == 2 * (N - 1)  # two objects, every frame but the prompt
    # the mode is really on: other candidates than SAM2's argmax, other memory than SAM2's window
    assert seen["choice"] > 0 and seen["memory"] > 0 and seen["stable"] > 0, seen


@needs_sam2
@pytest.mark.slow
def test_samurai_and_plain_sam2_differ_on_the_crossing(plain, samurai):
    p, prow = plain
    s, srow, _ = samurai
    assert all(r["memory"] is None for r in prow)  # plain sessions never route to SAMURAI's seams
    pm, sm = _masks(p.store), _masks(s.store)
    assert all(np.array_equal(pm[k], sm[k]) for k in pm if k[0] == PROMPT)
    assert sum(not np.array_equal(pm[k], sm[k]) for k in pm) > 0
    assert s.store.get_meta("sam2al.tracker")["tracker"] == "samurai"
    assert s.store.runs()[-1]["params"]["tracker"]["samurai"]["kf_score_weight"] == 1.0
    assert p.store.get_meta("sam2al.tracker") is None and "tracker" not in p.store.runs()[-1]["params"]


@needs_sam2
@pytest.mark.slow
def test_neutral_samurai_equals_plain_sam2_bit_for_bit(plain, clip, model, tmp_path):
    """kf weight 0, SAM2's presence threshold, everything admitted: SAMURAI's seams must give SAM2's
    masks exactly (checks the re-written heads and memory preparation against upstream's)."""
    from dl_utils.sam2al import SamuraiConfig

    p, _ = plain
    ses = _session(clip, tmp_path / "n.sqlite", model, tracker="samurai", samurai=SamuraiConfig(**NEUTRAL))
    ses.propagate("both", progress=False)
    pm, nm = _masks(p.store), _masks(ses.store)
    assert all(np.array_equal(pm[k], nm[k]) for k in pm)
    assert any(0 < m.sum() < H * W for m in nm.values())
    for f in range(N):
        for o in (1, 2):
            a, b = p.store.read_frame(f).by_object()[o], ses.store.read_frame(f).by_object()[o]
            assert a.score == b.score and a.provenance.object_score == b.provenance.object_score


@needs_sam2
@pytest.mark.slow
def test_resume_rebuilds_the_filter_from_the_store(samurai, clip, model, tmp_path):
    from dl_utils.sam2al import SamuraiConfig
    from dl_utils.sam2al.samurai import xyah_to_xyxy
    from dl_utils.sam2al.session import _Plan

    full, _, cfg = samurai
    # 1. the rebuilt filter: replaying the stored masks from the prompt up to frame g gives the very
    # prediction the uninterrupted run made on g (no network involved)
    checked = 0
    for oid in (1, 2):
        for g in range(PROMPT + 1, N):
            motion = full._rebuild_motion(oid, _Plan(g, N - 1, set(), PROMPT), False)
            motion.track.begin_frame()
            want = full.store.read_frame(g).by_object()[oid].provenance.extra["samurai_predicted_box"]
            if want is not None:
                assert list(xyah_to_xyxy(motion.track.mean)) == want, (oid, g)
                checked += 1
    assert checked >= 4
    # 2. a run cancelled after frame 4 and resumed in a new session equals the uninterrupted run: the
    # warm-up recomputes 3..4 from the prompt (SAM2's memory) and the filter measures their stored masks
    path = tmp_path / "r.sqlite"
    ses = _session(clip, path, model, tracker="samurai", samurai=SamuraiConfig(**TEST_CFG))
    ses.propagate("forward", callback=lambda f, i: f == 4 and ses.cancel(), progress=False)
    assert ses.store.frames() == [2, 3, 4]
    ses.store.close()
    again = _session(clip, path, model, tracker="samurai", samurai=SamuraiConfig(**TEST_CFG))
    s = again.propagate("both", progress=False)
    assert s["frames_written"] == N - 3 and s["frames_computed"] == 2 * (N - 1)
    for f in range(N):
        for o in (1, 2):
            a, b = full.store.read_frame(f).by_object()[o], again.store.read_frame(f).by_object()[o]
            assert np.array_equal(a.mask, b.mask) and a.score == b.score, (f, o)
            assert a.provenance.extra == b.provenance.extra, (f, o)


@needs_sam2
def test_tracker_switch_and_bad_options_are_one_line_errors(clip, model, tmp_path):
    from dl_utils.sam2al import SamuraiConfig, VideoSession

    path = tmp_path / "t.sqlite"
    ses = _session(clip, path, model, objects=(1,), tracker="samurai")
    ses.propagate(stop=3, progress=False)
    store = ses.store
    for kw, pattern in (({"tracker": "kalman"}, "tracker='kalman' is not a tracker mode; use one of sam2, samurai"),
                        ({"samurai": SamuraiConfig()}, "only apply with tracker='samurai'"),
                        ({"tracker": "samurai", "samurai": {"kf_score_weight": 1}}, "give a dl_utils.sam2al.SamuraiConfig"),
                        ({}, "tracked with tracker='samurai', not 'sam2'.*new store \\(--out\\).*force=True \\(--force\\)")):
        with pytest.raises(InputError, match=pattern) as e:
            VideoSession(clip, store, sam_model=model, **kw)
        assert "\n" not in str(e.value)
    # force: the other tracker's results go, the prompt stays, the store now says sam2
    forced = VideoSession(clip, store, sam_model=model, force=True)
    assert store.frames() == [PROMPT] and forced.locked_frames() == {1: [PROMPT]}
    assert store.get_meta("sam2al.tracker") == {"tracker": "sam2"}
    with pytest.raises(InputError, match="tracked with tracker='sam2', not 'samurai'"):
        VideoSession(clip, store, sam_model=model, tracker="samurai")


@needs_sam2
@pytest.mark.slow
def test_trimming_keeps_what_the_memory_bank_can_select(samurai):
    """Memory stays flat and trimming never drops a frame SAMURAI's memory rule would pick next,
    whatever was admitted (forward and backward, long runs of refused frames included)."""
    from dl_utils.sam2al.samurai import memory_frames
    from dl_utils.sam2al.session import _Motion

    ses, _, cfg = samurai
    from dl_utils.sam2al import MotionTrack

    rng = np.random.default_rng(5)
    slots = ses.engine.num_maskmem - 1
    for reverse in (False, True):
        for p_admit in (0.05, 0.5, 1.0):
            non_cond: dict[int, object] = {}
            motion = _Motion(MotionTrack(cfg))
            frames = range(400, 0, -1) if reverse else range(0, 400)
            untrimmed: dict[int, bool] = {}
            for f in frames:
                non_cond[f] = object()
                motion.admitted[f] = untrimmed[f] = bool(rng.random() < p_admit)
                ses._trim(non_cond, f, reverse, motion)
                nxt = f - 1 if reverse else f + 1
                assert memory_frames(nxt, non_cond.keys(), motion.admitted, slots, reverse) == \
                    memory_frames(nxt, untrimmed.keys(), untrimmed, slots, reverse), (reverse, p_admit, f)
                assert len(non_cond) <= ses.engine.max_obj_ptrs_in_encoder + slots


@needs_sam2
@pytest.mark.slow
def test_a_locked_frame_in_the_pass_restarts_the_filter(clip, model, tmp_path):
    """A prompt/correction is a conditioning frame: the filter restarts from its mask with zero
    velocity, so the next frame's prediction is that mask's box (on any frame, mid-pass included)."""
    from dl_utils.sam2al import SamuraiConfig
    from dl_utils.sam2al.samurai import mask_box

    ses = _session(clip, tmp_path / "c.sqlite", model, objects=(1,), tracker="samurai",
                   samurai=SamuraiConfig(**TEST_CFG))
    ses.add_mask(5, 1, _disk(5, 0))
    ses.propagate("forward", progress=False)
    for locked in (PROMPT, 5):
        want = mask_box(_disk(locked, 0))
        got = ses.store.read_frame(locked + 1).by_object()[1].provenance.extra["samurai_predicted_box"]
        assert got == pytest.approx(list(want), abs=1e-9), locked
    assert ses.store.read_frame(4).by_object()[1].provenance.extra["samurai_predicted_box"] != \
        pytest.approx(list(mask_box(_disk(PROMPT, 0))), abs=1e-6)  # in between, the filter moved on
