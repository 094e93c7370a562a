"""StepRng: the training forward's random stream (LoRA dropout): per rank, resumable, apart from the global one."""
import torch

from radar_train.train.rng import StepRng

CPU = torch.device("cpu")


def _masks(rng: StepRng, n: int, rank: int = 0) -> list[torch.Tensor]:
    out = []
    for _ in range(n):
        with rng.active(CPU, rank):
            out.append(torch.nn.functional.dropout(torch.ones(64), 0.5) > 0)
    return out


def test_each_rank_draws_its_own_masks_from_the_same_start():
    torch.manual_seed(0)  # seed_everything: the same global state on every rank
    ranks = []
    for rank in range(3):
        torch.manual_seed(0)
        ranks.append(_masks(StepRng(), 4, rank))
    for a, b in ((0, 1), (0, 2), (1, 2)):
        assert all(not torch.equal(x, y) for x, y in zip(ranks[a], ranks[b]))
    torch.manual_seed(0)
    assert all(torch.equal(x, y) for x, y in zip(_masks(StepRng(), 4, 1), ranks[1]))  # and the same again
    assert not torch.equal(ranks[0][0], ranks[0][1])  # a new mask every forward


def test_the_global_stream_is_left_as_it_was():
    torch.manual_seed(3)
    expected = torch.rand(5)
    torch.manual_seed(3)
    _masks(StepRng(), 3)
    assert torch.equal(torch.rand(5), expected)


def test_a_stream_restored_from_its_state_goes_on_as_the_uninterrupted_one():
    torch.manual_seed(1)
    whole = _masks(StepRng(), 6, rank=2)
    torch.manual_seed(1)
    first = StepRng()
    head = _masks(first, 2, rank=2)
    state = first.state_dict()
    torch.manual_seed(99)  # a resumed run's global state is another
    resumed = StepRng()
    resumed.load_state_dict(state)
    tail = _masks(resumed, 4, rank=2)
    assert all(torch.equal(x, y) for x, y in zip(head + tail, whole))
    assert StepRng().state_dict() is None  # nothing drawn yet: nothing to save


def test_a_state_of_the_earlier_scheme_goes_on_with_its_torch_state():
    torch.manual_seed(5)
    state = {"cpu": torch.get_rng_state()}
    expected = [torch.nn.functional.dropout(torch.ones(64), 0.5) > 0 for _ in range(2)]
    rng = StepRng()
    rng.load_state_dict(state)
    torch.manual_seed(123)
    assert all(torch.equal(x, y) for x, y in zip(_masks(rng, 2, rank=1), expected))
    assert set(rng.state_dict()) == {"cpu"}
