import numpy as np

from pi_classifier.smoothing import LabelSmoother


def scores(**by_index):
    values = np.zeros(10, np.float32)
    for key, value in by_index.items():
        values[int(key[1:])] = value
    return values


def test_label_appears_only_at_the_high_threshold():
    smoother = LabelSmoother(alpha=1.0, threshold_high=0.5, threshold_low=0.3, top_k=3)
    assert smoother.update(scores(c1=0.45)) == []
    assert [i for i, _ in smoother.update(scores(c1=0.55))] == [1]


def test_label_stays_until_below_the_low_threshold():
    smoother = LabelSmoother(alpha=1.0, threshold_high=0.5, threshold_low=0.3, top_k=3)
    smoother.update(scores(c1=0.6))
    assert [i for i, _ in smoother.update(scores(c1=0.35))] == [1]
    assert smoother.update(scores(c1=0.25)) == []


def test_noisy_still_scene_does_not_flicker():
    rng = np.random.default_rng(3)
    smoother = LabelSmoother(alpha=0.3, threshold_high=0.5, threshold_low=0.3, top_k=1)
    shown = []
    for _ in range(300):
        banana = float(np.clip(rng.normal(0.55, 0.15), 0, 1))
        shown.append(tuple(i for i, _ in smoother.update(scores(c4=banana,
                                                                c7=1 - banana))))
    settled = shown[10:]
    assert set(settled) == {(4,)}


def test_without_smoothing_the_same_noise_flickers():
    rng = np.random.default_rng(3)
    smoother = LabelSmoother(alpha=1.0, threshold_high=0.5, threshold_low=0.5, top_k=1)
    shown = set()
    for _ in range(300):
        banana = float(np.clip(rng.normal(0.55, 0.15), 0, 1))
        shown.add(tuple(i for i, _ in smoother.update(scores(c4=banana,
                                                             c7=1 - banana))))
    assert len(shown) > 1


def test_average_moves_by_alpha():
    smoother = LabelSmoother(alpha=0.5, threshold_high=0.0, threshold_low=0.0, top_k=1)
    smoother.update(scores(c2=1.0))
    (index, score), = smoother.update(scores(c2=0.0, c3=0.2))
    assert index == 2 and score == 0.5


def test_top_k_and_reset():
    smoother = LabelSmoother(alpha=1.0, threshold_high=0.1, threshold_low=0.05, top_k=2)
    shown = smoother.update(scores(c1=0.2, c2=0.5, c3=0.3))
    assert [i for i, _ in shown] == [2, 3]
    smoother.reset()
    assert smoother.update(scores(c5=0.05)) == []


def test_leader_keeps_its_place_until_clearly_beaten():
    smoother = LabelSmoother(alpha=1.0, threshold_high=0.3, threshold_low=0.2, top_k=2)
    assert smoother.update(scores(c1=0.5, c2=0.4))[0][0] == 1
    assert smoother.update(scores(c1=0.45, c2=0.5))[0][0] == 1
    assert smoother.update(scores(c1=0.3, c2=0.6))[0][0] == 2
