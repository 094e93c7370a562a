"""The weight average (model.ema): final/ and step exports hold the exponential moving average of the trained
weights, computed here by hand from the weights after every step; before start_step the average is the current
weights; checkpoints hold the average and the current weights (trained tensors only) and a resume continues
both exactly; validation, the best step and the TensorBoard image grid judge the average; config errors are
reported."""
from __future__ import annotations

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import Logger
from safetensors.torch import load_file

from radar_train.train.ema import EmaArgs
from radar_train.train.module import MonitorArgs, OutputArgs, RadarLoraModule, is_trained_key
from radar_train.train.optim import OptimArgs

EMA = EmaArgs(decay=0.5, start_step=2)
STEPS = 6


class _Record(Callback):
    """The trained tensors after every optimizer step (a Trainer callback: it runs before the module's own)."""

    def __init__(self):
        self.after_step: dict[int, dict[str, torch.Tensor]] = {}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.after_step[trainer.global_step] = {k: v.detach().clone() for k, v in pl_module.state_dict().items()
                                                    if is_trained_key(k)}


def _fit(root, steps: int, loader, ckpt_path=None, ema: EmaArgs = EMA, export_every: int = 0):
    torch.manual_seed(0)
    module = RadarLoraModule(optim=OptimArgs(learning_rate=1e-2, warmup_steps=1, schedule_steps=STEPS),
                             output=OutputArgs(save_every_n_steps=2, export_every_n_steps=export_every), ema=ema)
    record = _Record()
    trainer = pl.Trainer(default_root_dir=str(root), accelerator="cpu", devices=1, precision="32-true",
                         max_steps=steps, enable_progress_bar=False, enable_model_summary=False, logger=False,
                         num_sanity_val_steps=0, limit_val_batches=0, callbacks=[record])
    # 8 pairs, two batches of 4: the resume point (step 2 or 4) ends an epoch
    trainer.fit(module, loader(), ckpt_path=ckpt_path)
    return module, record.after_step


def _by_hand(after_step: dict[int, dict[str, torch.Tensor]], upto: int, args: EmaArgs = EMA,
             lerp: bool = False) -> dict:
    """The average after step `upto`; with `lerp`, rounded as torch's EMA rounds it (torch.lerp), bit for bit."""
    avg = None
    for step in range(1, upto + 1):
        w = after_step[step]
        if avg is None or step - 1 < args.start_step:
            avg = {k: v.clone() for k, v in w.items()}
        elif lerp:
            avg = {k: torch.lerp(avg[k], w[k], 1 - args.decay) for k in w}
        else:
            avg = {k: args.decay * avg[k] + (1 - args.decay) * w[k] for k in w}
    return avg


def _adapter(folder) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "adapter_model.safetensors"))


def _close(a: dict, b: dict) -> None:
    assert a.keys() == b.keys() and a
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-6, atol=1e-7)


@pytest.fixture(scope="module")
def straight(tmp_path_factory, make_loader):
    root = tmp_path_factory.mktemp("straight")
    module, after = _fit(root, STEPS, make_loader, export_every=4)
    return root, module, after


def test_final_and_step_exports_hold_the_moving_average(straight, tmp_path):
    root, module, after = straight
    want = _by_hand(after, STEPS)
    assert not all(torch.equal(want[k], after[STEPS][k]) for k in want)  # the average is not the last step
    _close({k: v for k, v in module.state_dict().items() if is_trained_key(k)}, want)  # ended with the average
    for folder, upto in ((root / "final", STEPS), (root / "step-000004", 4)):
        module.load_state_dict(_by_hand(after, upto), strict=False)
        _close(_adapter(folder), _adapter(module.export(tmp_path / folder.name)))
    module.load_state_dict(want, strict=False)


def test_before_start_step_the_average_is_the_current_weights(tmp_path, make_loader):
    module, after = _fit(tmp_path, 2, make_loader)  # ends at start_step: no averaging yet
    got = {k: v for k, v in module.state_dict().items() if is_trained_key(k)}
    _close(got, after[2])


def test_checkpoints_hold_average_and_current_and_a_resume_is_exact(straight, tmp_path, make_loader):
    _, module, after = straight
    root = tmp_path / "resumed"
    _fit(root, 4, make_loader)
    ckpt = torch.load(root / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert set(ckpt["state_dict"]) == set(ckpt["current_model_state"]) == set(after[4])  # trained tensors only
    _close(ckpt["state_dict"], _by_hand(after, 4))
    _close(ckpt["current_model_state"], after[4])
    resumed, after2 = _fit(root, STEPS, make_loader, ckpt_path=str(root / "checkpoints" / "last.ckpt"))
    for step in (5, 6):  # the current weights continue exactly ...
        _close(after2[step], after[step])
    a = {k: v for k, v in module.state_dict().items() if is_trained_key(k)}
    b = {k: v for k, v in resumed.state_dict().items() if is_trained_key(k)}
    _close(b, a)  # ... and so does the average


def test_the_final_steps_checkpoint_continues_from_the_weights_as_trained(tmp_path, make_loader):
    module, after = _fit(tmp_path, 5, make_loader)  # step 5 is saved when training ends, after the average took over
    ckpt = torch.load(tmp_path / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["global_step"] == 5
    _close(ckpt["state_dict"], _by_hand(after, 5))
    _close(ckpt["current_model_state"], after[5])
    _close({k: v for k, v in module.state_dict().items() if is_trained_key(k)}, _by_hand(after, 5))  # final/'s


def test_the_average_leaves_the_frozen_decoder_bit_for_bit(tmp_path, make_loader):
    module, _ = _fit(tmp_path, 4, make_loader, ema=EmaArgs(decay=0.9))  # (0.5 would hide rounding: it is exact)
    torch.manual_seed(0)
    fresh = RadarLoraModule(optim=OptimArgs(learning_rate=1e-2, warmup_steps=1, schedule_steps=STEPS),
                            output=OutputArgs(save_every_n_steps=2), ema=EmaArgs(decay=0.9)).state_dict()
    frozen = [k for k in fresh if not is_trained_key(k)]
    assert frozen and [k for k in frozen if not torch.equal(module.state_dict()[k], fresh[k])] == []


def test_invalid_ema_settings_are_reported_together():
    with pytest.raises(ValueError, match=r"ema.decay must be in \[0, 1\).*ema.every_n_steps must be >= 1"):
        RadarLoraModule(ema=EmaArgs(decay=1.0, every_n_steps=0))


class _ValLosses(Callback):
    def __init__(self):
        self.by_step: dict[int, float] = {}

    def on_validation_end(self, trainer, pl_module):
        self.by_step[trainer.global_step] = float(trainer.callback_metrics["val/loss"])


def test_validation_and_the_best_step_judge_the_average(tmp_path, make_loader):
    from radar_train.train.selection import EarlyStoppingArgs

    torch.manual_seed(0)
    module = RadarLoraModule(optim=OptimArgs(learning_rate=1e-2, warmup_steps=1, schedule_steps=STEPS),
                             output=OutputArgs(save_every_n_steps=2), ema=EmaArgs(decay=0.5, start_step=1),
                             early_stopping=EarlyStoppingArgs(final_adapter="best"))
    record, val = _Record(), _ValLosses()
    trainer = pl.Trainer(default_root_dir=str(tmp_path), accelerator="cpu", devices=1, precision="32-true",
                         max_steps=STEPS, enable_progress_bar=False, enable_model_summary=False, logger=False,
                         num_sanity_val_steps=0, callbacks=[record, val])
    trainer.fit(module, make_loader(), make_loader(4))
    assert sorted(val.by_step) == [2, 4, 6]  # one validation per epoch of two batches
    check = pl.Trainer(accelerator="cpu", devices=1, precision="32-true", logger=False, enable_progress_bar=False,
                       enable_model_summary=False)
    for step, logged in val.by_step.items():  # the loss of the averaged weights, not of the current ones
        module.load_state_dict(_by_hand(record.after_step, step, EmaArgs(decay=0.5, start_step=1)), strict=False)
        want = check.validate(module, make_loader(4), verbose=False)[0]["val/loss"]
        assert logged == pytest.approx(want, rel=1e-5)
    best = min(val.by_step, key=val.by_step.get)
    ckpt = torch.load(next((tmp_path / "checkpoints").glob("best-step-*.ckpt")), map_location="cpu", weights_only=True)
    assert ckpt["global_step"] == best
    _close(ckpt["state_dict"], _by_hand(record.after_step, best, EmaArgs(decay=0.5, start_step=1)))


def test_every_n_steps_averages_the_weights_after_every_nth_step(tmp_path, make_loader):
    """every_n_steps 2 over 4 steps: the average takes the weights after steps 2 and 4 (the last step counts),
    not those after steps 1 and 3."""
    args = EmaArgs(decay=0.5, every_n_steps=2)
    module, after = _fit(tmp_path / "run", 4, make_loader, ema=args)
    want = {k: args.decay * after[2][k] + (1 - args.decay) * after[4][k] for k in after[4]}
    _close({k: v for k, v in module.state_dict().items() if is_trained_key(k)}, want)
    module.load_state_dict(want, strict=False)
    _close(_adapter(tmp_path / "run" / "final"), _adapter(module.export(tmp_path / "want")))


class _Images(Logger):
    """A logger that keeps the image grids logged (its experiment's add_image), by step."""

    def __init__(self):
        super().__init__()
        self.by_step: dict[int, torch.Tensor] = {}

    name, version = "images", 0

    @property
    def experiment(self):
        return self

    def log_metrics(self, metrics, step=None):
        pass

    def log_hyperparams(self, params, *args, **kwargs):
        pass

    def add_image(self, tag, img, step, dataformats):
        assert tag == "val/samples" and dataformats == "HWC"
        self.by_step[step] = torch.from_numpy(img.copy())


def _grid(module: RadarLoraModule, weights: dict, batch: dict) -> torch.Tensor:
    """The grid log_image_grid draws for `batch`, decoded with `weights` (trained tensors)."""
    from radar_train.images import grid, to_uint8
    from radar_train.train.metrics import to_unit

    module.load_state_dict(weights, strict=False)
    with torch.no_grad():
        cols = [module.decode(batch["fhat_lq"], adapters=False)[0], module.decode(batch["fhat_lq"])[0],
                module.decode(batch["fhat_hq"], adapters=False)[0]]
    cols = [to_uint8(to_unit(c.float())) for c in cols]
    img = grid([[c[i] for c in cols] for i in range(2)], col_titles=["LQ baseline", "student", "teacher"],
               scale=max(1, 96 // cols[0].shape[-1]))
    return torch.from_numpy(np.asarray(img).copy())


def test_the_image_grid_during_training_shows_the_average(tmp_path, make_loader, make_batch):
    """The grid logged at a step on the cadence decodes with the average (as validation at that step does, and
    the grid at the end), not with the weights being trained."""
    torch.manual_seed(0)
    module = RadarLoraModule(optim=OptimArgs(learning_rate=1e-2, warmup_steps=1, schedule_steps=STEPS),
                             output=OutputArgs(checkpoints=False, export_final=False), ema=EMA,
                             monitor=MonitorArgs(images_every_n_steps=4, num_image_samples=2,
                                                 train_metrics_every_n_steps=0))
    batch = {**make_batch(2, seed=7), "label": torch.zeros(2, dtype=torch.long)}
    module._image_batch = batch  # (setup takes it from a cache's validation shards)
    images, record = _Images(), _Record()
    trainer = pl.Trainer(default_root_dir=str(tmp_path), accelerator="cpu", devices=1, precision="32-true",
                         max_steps=STEPS, enable_progress_bar=False, enable_model_summary=False,
                         logger=images, num_sanity_val_steps=0, limit_val_batches=0,
                         callbacks=[record])
    trainer.fit(module, make_loader())
    assert sorted(images.by_step) == [0, 4, STEPS]
    module.eval()
    average, trained = _by_hand(record.after_step, 4, lerp=True), record.after_step[4]
    assert torch.equal(images.by_step[4], _grid(module, average, batch))
    assert not torch.equal(images.by_step[4], _grid(module, trained, batch))  # (the two differ at step 4)
    assert torch.equal(images.by_step[STEPS], _grid(module, _by_hand(record.after_step, STEPS, lerp=True), batch))
