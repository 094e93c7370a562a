"""RadarPipeline's arguments are checked before anything is loaded or sampled: `precision` (the short names and
torch's, as radar-cache takes them), `output`, `labels` and `seeds`; a bad one is a ValueError / TypeError
naming it, never an error from deep inside or a silently different result."""
from __future__ import annotations

import typing

import numpy as np
import pytest
import torch

import radar_train.inference.pipeline as pipeline_module
from radar_train.config import AccelArgs, ModelArgs, SamplingConfig
from radar_train.inference import PipelineArgs, RadarPipeline
from radar_train.inference.pipeline import PRECISIONS, resolve_precision
from radar_train.sampling import NextScaleSampler


@pytest.fixture(scope="module")
def pipe() -> RadarPipeline:
    return RadarPipeline.from_config(PipelineArgs(model=ModelArgs("tiny"), accel=AccelArgs("fastvar"), device="cpu"))


@pytest.fixture
def no_sampling(monkeypatch):
    """Sampling fails the test: the arguments must be refused before it."""
    def start(*a, **k):
        raise AssertionError("sampling started before the arguments were checked")

    monkeypatch.setattr(NextScaleSampler, "start", start)


# ---------------------------------------------------------------------------- precision
@pytest.mark.parametrize("bad", ["bf17", "BF16", "float64", "", None, torch.bfloat16])
def test_bad_precision_is_refused_before_any_model_loads(monkeypatch, bad):
    loaded = []
    monkeypatch.setattr(pipeline_module, "load_models", lambda *a, **k: loaded.append(a) or pytest.fail("loaded"))
    with pytest.raises(ValueError, match=r"^precision must be one of auto, fp32, bf16, fp16, float32, bfloat16, "
                                         r"float16, got "):
        RadarPipeline.from_config(PipelineArgs(model=ModelArgs("tiny"), device="cpu", precision=bad))
    assert loaded == []


@pytest.mark.parametrize("torch_name, short", [("float32", "fp32"), ("bfloat16", "bf16"), ("float16", "fp16")])
def test_torch_spellings_of_precision_mean_the_short_ones(torch_name, short):
    for dev in (torch.device("cpu"), torch.device("cuda")):
        assert resolve_precision(dev, torch_name) == resolve_precision(dev, short)
    assert resolve_precision(torch.device("cpu"), "bfloat16") == torch.bfloat16


def test_every_precision_radar_cache_takes_is_one_the_pipeline_takes():
    from radar_train.cache.config import CacheArgs

    cache_values = typing.get_args(typing.get_type_hints(CacheArgs)["precision"])
    assert cache_values and set(cache_values) <= set(PRECISIONS)
    assert set(typing.get_args(pipeline_module.Precision)) == set(PRECISIONS)  # what the CLIs' parsers accept


def test_a_torch_spelling_builds_the_pipeline():
    pipe = RadarPipeline.from_config(PipelineArgs(model=ModelArgs("tiny"), accel=AccelArgs("fastvar"), device="cpu",
                                                  precision="bfloat16"))
    assert pipe.autocast_dtype == torch.bfloat16


# ---------------------------------------------------------------------------- output
@pytest.mark.parametrize("bad", ["numpy", "np", "UINT8", "", None])
def test_unknown_output_is_refused_before_sampling(pipe, no_sampling, bad):
    with pytest.raises(ValueError, match=r"^output must be one of 'uint8', 'pil', 'float', got "):
        pipe.generate([1], [0], output=bad)


# ---------------------------------------------------------------------------- labels and seeds
BAD_SEEDS = [
    (0, TypeError, "seeds must be a sequence"),
    (None, TypeError, "seeds must be a sequence"),
    ("01", TypeError, "seeds must be a sequence"),
    ([0.0, 1.0], TypeError, "seeds must be integers"),
    ([True, False], TypeError, "seeds must be integers"),
    (torch.tensor([0.0, 1.0]), TypeError, "seeds must be integers"),
    (np.array([0.5, 1.0]), TypeError, "seeds must be integers"),
    (torch.tensor([[0, 1]]), TypeError, "seeds must be one-dimensional"),
    ([0], ValueError, "seeds: got 1 seeds for 2 labels"),
    ([0, 1, 2], ValueError, "seeds: got 3 seeds for 2 labels"),
    ([0, 2 ** 63], ValueError, "seeds: 9223372036854775808 does not fit in 64 bits"),
]
BAD_LABELS = [
    ([1.7, 2], ValueError, "labels must be whole class numbers, got 1.7"),
    (torch.tensor([1.0, 2.5]), ValueError, "labels must be whole class numbers, got 2.5"),
    ([float("nan"), 1], ValueError, "labels must be whole class numbers, got nan"),
    # fractions that float32 rounds to whole numbers: 9.9999999 would be sampled as 10, the unconditional class
    ([9.9999999, 1], ValueError, "labels must be whole class numbers, got 9.9999999"),
    ([1, 1.00000001], ValueError, "labels must be whole class numbers, got 1.00000001"),
    (3, TypeError, "labels must be a sequence"),
    (None, TypeError, "labels must be a sequence"),
    ("12", TypeError, "labels must be a sequence"),
    (torch.tensor(3), TypeError, "labels must be one-dimensional"),
    ([[1], [2]], TypeError, "labels must be class numbers"),
    (["a", "b"], TypeError, "labels must be class numbers"),
    ([True, False], TypeError, "labels must be class numbers"),
    ([1, 11], ValueError, r"labels must lie in \[0, 10\] \(10 = unconditional\), got 11"),
    ([-1, 1], ValueError, r"labels must lie in \[0, 10\] \(10 = unconditional\), got -1"),
    ([1e20, 1], ValueError, r"labels must lie in \[0, 10\] \(10 = unconditional\), got 1e\+20"),  # (not wrapped)
]
CALLS = {
    "generate": lambda p, labels, seeds: p.generate(labels, seeds),
    "compare": lambda p, labels, seeds: p.compare(labels, seeds),
    "sample_latents": lambda p, labels, seeds: p.sample_latents(labels, seeds),
}


@pytest.mark.parametrize("call", CALLS)
@pytest.mark.parametrize("seeds, error, message", BAD_SEEDS)
def test_bad_seeds_are_refused_naming_seeds_before_sampling(pipe, no_sampling, call, seeds, error, message):
    with pytest.raises(error, match=f"^{message}"):
        CALLS[call](pipe, [1, 2], seeds)


@pytest.mark.parametrize("call", CALLS)
@pytest.mark.parametrize("labels, error, message", BAD_LABELS)
def test_bad_labels_are_refused_naming_labels_before_sampling(pipe, no_sampling, call, labels, error, message):
    with pytest.raises(error, match=f"^{message}"):
        CALLS[call](pipe, labels, [0, 1])


def test_the_accepted_forms_of_labels_and_seeds_give_the_same_images(pipe):
    """Lists, tuples, ranges, numpy arrays, tensors (any integer dtype), whole floats as labels: one meaning."""
    want = pipe.generate([1, 2], [5, 6])
    for labels, seeds in [((1, 2), (5, 6)), (range(1, 3), range(5, 7)), (np.array([1, 2]), np.array([5, 6])),
                          (torch.tensor([1, 2], dtype=torch.int32), torch.tensor([5, 6])), ([1.0, 2.0], [5, 6]),
                          (torch.tensor([1.0, 2.0]), [np.int64(5), torch.tensor(6)])]:
        assert torch.equal(pipe.generate(labels, seeds), want)
    assert pipe.generate([], []).shape[0] == 0


# ---------------------------------------------------------------------------- sampler settings
@pytest.mark.parametrize("top_k", [64.0, 64.5, True, "64"])
def test_a_top_k_that_is_not_a_whole_number_is_refused_before_sampling(pipe, no_sampling, top_k):
    """torch.topk takes an int: 64.0 used to pass the check and fail inside sampling (or run, when a sampler for
    top_k 64 was kept already: the kept samplers' keys compare 64 == 64.0)."""
    pipe._sampling(None, 64, None)  # a sampler for top_k 64 is kept (building one samples nothing)
    with pytest.raises(ValueError, match=r"sampling.top_k must be a whole number >= 0, got "):
        pipe.generate([1], [0], top_k=top_k)
    with pytest.raises(ValueError, match=r"sampling.top_k must be a whole number >= 0, got 64.0"):
        RadarPipeline.from_config(PipelineArgs(model=ModelArgs("tiny"), sampling=SamplingConfig(top_k=64.0),
                                               device="cpu"))
    assert SamplingConfig(top_k=np.int64(64)).problems() == []


@pytest.mark.parametrize("call, name", [
    (lambda p: p.generate([1], [0], accelerated="no"), "accelerated"),
    (lambda p: p.generate([1], [0], use_adapter=0), "use_adapter"),
    (lambda p: p.sample_latents([1], [0], accelerated=None), "accelerated"),
    (lambda p: p.decode(torch.zeros(1, p.vqvae.config.z_channels, 2, 2), adapter="no"), "adapter"),
    (lambda p: p.decode(torch.zeros(1, p.vqvae.config.z_channels, 2, 2), adapter=None), "adapter"),
])
def test_a_flag_that_is_not_a_bool_is_refused_before_sampling(pipe, no_sampling, call, name):
    """generate(accelerated="no") ran accelerated, decode(adapter="no") decoded with the adapter: any non-empty
    string is true."""
    with pytest.raises(TypeError, match=f"^{name} must be True or False"):
        call(pipe)
