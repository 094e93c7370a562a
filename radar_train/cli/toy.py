"""radar-toy: train the toy world's models (`train`) and measure what acceleration breaks and PAA wins
back on them (`measure`); SCA-Mask against PTS and a diagonal window at equal attention budgets (`masks`);
several measure results as one (`combine`)."""
from __future__ import annotations

import logging
from typing import Callable, Optional

from jsonargparse import CLI

from radar_train.toyworld.masks import MasksConfig
from radar_train.toyworld.measure import MeasureConfig
from radar_train.toyworld.recipe import ToyTrainConfig


def train(output: str = "toy_weights", recipe: ToyTrainConfig = ToyTrainConfig(), overwrite: bool = False) -> int:
    """Train the toy VQ-VAE, VAR and classifier from scratch.

    On the CPU by default (the defaults reproduce the
    shipped weights in radar_train/toyworld/weights/). Every recipe setting and the output are checked before
    training: files of an earlier run there are replaced only with --overwrite, and only once all three models
    are trained (the files are written under a temporary folder and moved in at the end). The trained VQ-VAE and
    VAR are kept in OUTPUT/toy-train-progress/ until then: a run stopped (Ctrl-C, SIGTERM, an error, a kill) is
    gone on with by the same command, from the stage it was in, to the same files.

    Args:
        output: folder for toy_vae.safetensors, toy_var.safetensors, toy_classifier.safetensors, toy_train.json.
        recipe: what to train and how (--recipe.vqvae.steps 600, ...).
        overwrite: replace those files if the folder holds them already (and start over from the progress of a
            run of another recipe in OUTPUT/toy-train-progress/).
    """
    from radar_train.cli.common import end_stopped_run, signals_ignored_to_the_end, sigterm_stops
    from radar_train.config import check_device
    from radar_train.outputs import check_output_dir, swaps_end_command
    from radar_train.toyworld.preset import CLASSIFIER_FILE, INFO_FILE, VAE_FILE, VAR_FILE
    from radar_train.toyworld.recipe import check_recipe, recipe_settings, train_all
    from radar_train.toyworld.train_progress import ToyTrainProgress

    check_device(recipe.device, "--recipe.device")
    check_recipe(recipe)
    check_output_dir(output, (VAE_FILE, VAR_FILE, CLASSIFIER_FILE, INFO_FILE), "--output", overwrite=overwrite)
    _logging()
    try:
        with sigterm_stops(), swaps_end_command(signals_ignored_to_the_end):  # (the models moved in: it ends)
            info = train_all(recipe, output, overwrite=overwrite)
    except BaseException as e:
        from radar_train.outputs import OutputError

        if isinstance(e, OutputError):  # (a check: nothing was run)
            raise
        return end_stopped_run("radar-toy train", e, ToyTrainProgress(output, recipe_settings(recipe)).said())
    m = info["metrics"]
    print(f"reconstruction PSNR (held-out): {m['vqvae']['psnr_db']:.2f} dB")
    print(f"classifier accuracy (held-out): {100 * m['classifier']['heldout_accuracy']:.1f} %")
    print(f"total time: {info['times']['total_s']:.0f} s  ({output})")
    return 0


def measure(setup: MeasureConfig = MeasureConfig(), output: Optional[str] = None, overwrite: bool = False) -> int:
    """Measure the toy models, the damage of acceleration and what PAA wins back.

    Reconstruction PSNR, class accuracy and toy FID of vanilla samples, what the
    FastVAR / StageVAR / SCA settings cost (PSNR vs vanilla, accuracy, toy FID) and, given adapters (several
    per setting by name), what PAA wins back (G_mse, ΔPSNR, FID gap closed).

    Args:
        setup: models, samples and methods to measure (--setup.images_per_class 50, ...).
        output: folder for metrics.json, metrics.md and the comparison grid (default: print only).
        overwrite: replace those files if the folder holds them already.
    """
    from radar_train.toyworld.measure import run_measure

    _logging()
    return _report(lambda: run_measure(setup, output, overwrite=overwrite), "radar-toy measure")


def masks(setup: MasksConfig = MasksConfig(), output: Optional[str] = None, overwrite: bool = False) -> int:
    """SCA-Mask vs FastVAR's pivotal tokens vs a diagonal-window mask at equal attention budgets (RADAR Fig. 9).

    Class accuracy, PSNR vs vanilla and toy FID of each family (sca, window, pts) at each nominal attention
    budget, with the achieved share of attention pairs, and with the PAA adapters given per setting
    (--setup.adapters '{"sca@0.5": "adapters/sca50", ...}').

    Args:
        setup: models, families, budgets, adapters and samples (--setup.budgets '[0.5, 0.25]', ...).
        output: folder for masks.json, masks.md and masks.png (default: print only).
        overwrite: replace those files if the folder holds them already.
    """
    from radar_train.toyworld.masks import run_masks

    _logging()
    return _report(lambda: run_masks(setup, output, overwrite=overwrite), "radar-toy masks")


def combine(inputs: Optional[list[str]] = None, output: Optional[str] = None, overwrite: bool = False) -> int:
    """Combine several `radar-toy measure` results (e.g. adapter seeds measured in separate runs) into one.

    Every input must have measured the same models, samples and code (the vanilla row, the settings' rows
    and the baselines identical to the last digit); the adapter groups (paa_s0, paa_s1, ...) are summarised
    again over all inputs (mean ± sd).

    Args:
        inputs: two or more metrics.json files of radar-toy measure (--inputs '[a/metrics.json, b/metrics.json]').
        output: folder for the combined metrics.json and metrics.md (default: print only).
        overwrite: replace those files if the folder holds them already.
    """
    from radar_train.toyworld.combine import run_combine

    return _report(lambda: run_combine(inputs or [], output, overwrite=overwrite), "radar-toy combine")


def _report(run: Callable[[], dict], prog: str) -> int:
    """Print the report `run` makes: a SIGTERM or Ctrl-C while it measures says nothing was written (SIGTERM ended
    it without a line); from its outputs' move into place on, they are ignored (it ended with 143 or 130, its
    outputs in place)."""
    from radar_train.cli.common import run_until_stopped, signals_ignored_to_the_end, stopped_status
    from radar_train.outputs import swaps_end_command

    with swaps_end_command(signals_ignored_to_the_end):
        report = run_until_stopped(prog, run)
    if report is None:
        return stopped_status()
    print(report["markdown"])
    return 0


def _logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")


def main(argv: list[str] | None = None) -> None:
    from radar_train.cli.common import run_main

    commands = [train, measure, masks, combine]
    run_main("radar-toy", lambda args: CLI(commands, args=args, exit_on_error=False), argv,
             commands=[c.__name__ for c in commands])


if __name__ == "__main__":
    main()
