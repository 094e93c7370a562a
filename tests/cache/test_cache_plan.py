"""The plan: sample i -> (label, seed) as a pure function of i, class sets, shards."""
import numpy as np
import pytest

from radar_train.cache.config import PlanArgs
from radar_train.cache.plan import Plan, resolve_classes


def test_sample_label_and_seed_follow_the_documented_rule():
    plan = Plan.from_args(PlanArgs(classes=[3, 7, 9], images_per_class=4, base_seed=100, shard_size=5), 10)
    labels, seeds = plan.labels_seeds(0, plan.num_samples)
    assert labels.tolist() == [3, 7, 9] * 4
    assert seeds.tolist() == list(range(100, 112))
    assert plan.num_samples == 12 and plan.num_shards == 3
    assert [plan.shard_range(s) for s in range(3)] == [(0, 5), (5, 10), (10, 12)]


def test_any_slice_of_the_plan_equals_the_whole_plan_sliced():
    plan = Plan.from_args(PlanArgs(classes="all", images_per_class=None, num_samples=50, shard_size=7), 10)
    labels, seeds = plan.labels_seeds(0, 50)
    for a, b in [(0, 7), (7, 14), (13, 29), (49, 50)]:
        la, sa = plan.labels_seeds(a, b)
        assert np.array_equal(la, labels[a:b]) and np.array_equal(sa, seeds[a:b])


def test_a_larger_plan_extends_a_smaller_one():
    small = Plan.from_args(PlanArgs(images_per_class=2, shard_size=4), 10)
    large = Plan.from_args(PlanArgs(images_per_class=5, shard_size=4), 10)
    for x, y in zip(small.labels_seeds(0, small.num_samples), large.labels_seeds(0, small.num_samples)):
        assert np.array_equal(x, y)


@pytest.mark.parametrize("spec, expected", [("all", list(range(5))), ("1:4", [1, 2, 3]), ([4, 0], [4, 0]),
                                            ("0-2,4", [0, 1, 2, 4])])
def test_class_sets(spec, expected):
    assert resolve_classes(spec, 5) == (expected, [])


@pytest.mark.parametrize("spec, message", [("0:7", "out of range"), ("some", "START:STOP"), ([1, 1], "twice"),
                                           ("3:3", "empty"), ("0-7", "out of range"), ("2-1", "0-3,7")])
def test_bad_class_sets_are_reported(spec, message):
    classes, problems = resolve_classes(spec, 5)
    assert any(message in p for p in problems), problems


def test_exactly_one_of_per_class_and_total_is_required():
    with pytest.raises(ValueError, match="exactly one of plan.images_per_class and plan.num_samples"):
        Plan.from_args(PlanArgs(images_per_class=2, num_samples=10), 10)


def test_plan_round_trips_through_its_manifest_dict():
    for args in (PlanArgs(classes="2:6", images_per_class=3, base_seed=9, shard_size=5),
                 PlanArgs(images_per_class=None, num_samples=17, shard_size=4)):
        plan = Plan.from_args(args, 10)
        assert Plan.from_dict(plan.to_dict()) == plan
