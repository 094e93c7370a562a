"""`radar-toy measure`: what the toy models do, what acceleration breaks, what PAA wins back.

- reconstruction PSNR of the VQ-VAE on held-out toy images;
- class accuracy (the toy classifier's verdict) and toy FID (`radar_train.toyworld.fid`) of vanilla
  samples, per-sample seeds held out from any PAA cache;
- per acceleration setting (`fastvar:default`, `stagevar:paper`, ...): PSNR / SSIM of the accelerated image
  against the vanilla image of the same label and seed, its class accuracy, and its toy FID against real
  renders and against the vanilla samples;
- per setting and adapter (several per setting, by name): the same for the restored images, the restoration
  metrics of methods.md §5.1 (T = vanilla image, Q = accelerated image, S = accelerated latent through the
  adapted decoder: gap closed G_mse, ΔPSNR, ΔSSIM, harmlessness) and the FID gap closed
  (FID_acc − FID_acc+PAA) / (FID_acc − FID_vanilla) of §5.2;
- per run, its sharpness against the vanilla samples (fine-detail energy, `sharpness_vs`: below 1 = smoother),
  beside real renders' and the VQ-VAE reconstructions'; adapters whose names differ only by a seed
  suffix (`paa_s0`, `paa_s1`) form a group, reported as mean ± standard deviation.
"""
from __future__ import annotations

import logging
import math
import re
import statistics
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional, Sequence, Union

import torch

from radar_train.accel import AccelMethod
from radar_train.accel.spec import build_specs, parse_spec
from radar_train.config import AccelArgs, ModelArgs, SamplingConfig
from radar_train.formatting import fixed
from radar_train.images import save_grid, to_uint8
from radar_train.inputs import InputError
from radar_train.models import VQVAE, ModelIdentity, load_models, read_state_dict
from radar_train.outputs import check_output_dir, staged_entries, write_report
from radar_train.progress import Progress, log_mode
from radar_train.sampling import NextScaleSampler
from radar_train.seeding import seed_range_problems
from radar_train.toyworld.classifier import ToyClassifier, accuracy
from radar_train.toyworld.common import make_bank
from radar_train.toyworld.data import CLASS_NAMES, HELDOUT_SEED, NUM_CLASSES, WorldConfig
from radar_train.toyworld.fid import ToyFID, fid_gap_closed
from radar_train.toyworld.preset import CLASSIFIER_FILE, WEIGHTS_DIR
from radar_train.toyworld.train_vqvae import reconstruct_bank, reconstruction_psnr
from radar_train.train.metrics import RestorationStats, high_frequency_energy, psnr_per_image, ssim_per_image

log = logging.getLogger(__name__)

DEFAULT_METHODS = ["fastvar:default", "fastvar:aggressive", "stagevar:default", "stagevar:paper"]
OUTPUT_FILES = ("metrics.json", "metrics.md", "toyworld_grid.png")
DEFAULT_ADAPTER_NAME = "paa"
"""The name of an adapter given alone (`{"fastvar:aggressive": "adapters/a"}`)."""

AdapterSpec = Union[str, dict[str, str]]
"""One adapter folder, or {name: folder} for several (e.g. {"paa_s0": "adapters/a", "paa_s1": "adapters/b"})."""


def toy_model() -> ModelArgs:
    """The shipped toy VQ-VAE + VAR."""
    return ModelArgs(preset="toy")


def toy_sampling() -> SamplingConfig:
    """The sampler settings of every toy-world measurement (those of configs/cache/toy.yaml)."""
    return SamplingConfig(cfg=3.0, top_k=32, top_p=0.0, noise="per_sample")


@dataclass
class MeasureConfig:
    """What `radar-toy measure` measures."""

    model: ModelArgs = field(default_factory=toy_model)
    """VQ-VAE + VAR (default: the shipped toy weights)."""
    classifier: Optional[str] = None
    """Toy classifier weights (default: the shipped toy_classifier.safetensors)."""
    sampling: SamplingConfig = field(default_factory=toy_sampling)
    """Sampler settings of every run (vanilla and accelerated)."""
    methods: list[str] = field(default_factory=lambda: list(DEFAULT_METHODS))
    """Acceleration settings as method specs (`radar_train.accel.spec`): fastvar:<preset> (default | mild |
    aggressive), fastvar:budget=0.5 (pivotal tokens at an attention budget), fastvar:prune=4:0.3/6:0.5/8:0.6,
    stagevar:<preset> (default | paper), sca:<options>, e.g.
    sca:default+mask_file=radar_train/toyworld/weights/toy_sca_mask.safetensors."""
    adapters: dict[str, AdapterSpec] = field(default_factory=dict)
    """method:preset -> adapter folder exported by radar-train, or {name: folder} for several adapters of that
    setting (names differing only by a seed suffix _s<N> form a group: mean ± sd)."""
    images_per_class: int = 20
    """Samples per class for every run (10 × this = the sample count of every toy FID)."""
    fid_reference_images: int = 1000
    """Real toy renders (toy-world set 2) the toy FID is measured against."""
    base_seed: int = 1_000_000
    """Sample i gets seed base_seed + i (keep clear of the seeds of PAA caches)."""
    num_heldout_images: int = 200
    """Held-out toy images for the reconstruction PSNR."""
    grid_samples: int = 6
    """Samples shown in the comparison grid (one row each)."""
    batch_size: int = 50
    """Samples per sampler call."""
    num_threads: int = 2
    """CPU threads."""

    def problems(self) -> list[str]:
        """Every count out of range, sampler setting out of range, sample seeds that do not fit in 64 bits and a
        model that is not of the toy world, named as the options (`--setup.base_seed`); the methods, adapters and
        files are checked by `run_measure`."""
        p = [f"--setup.{k} must be >= 1, got {getattr(self, k)}" for k in
             ("num_threads", "images_per_class", "batch_size", "num_heldout_images", "grid_samples")
             if getattr(self, k) < 1]
        if self.fid_reference_images < 2:
            p.append(f"--setup.fid_reference_images must be >= 2 (a covariance needs two images), got "
                     f"{self.fid_reference_images}")
        n = NUM_CLASSES * max(1, self.images_per_class)
        p += [f"--setup.{q}" for q in self.sampling.problems()]
        return p + seed_range_problems("--setup.base_seed", self.base_seed, n) + self._model_problems()

    def _model_problems(self) -> list[str]:
        """A model that is not of the toy world (its images, held-out set and classifier are 64 px, 10 classes):
        it failed only after the models had loaded, in a reconstruction, naming no option. An unknown preset
        is left to the model loader's message."""
        from radar_train.models import get_preset

        try:
            preset = get_preset(self.model.preset)
        except ValueError:
            return []
        size, classes = preset.image_size, preset.var.num_classes
        if (size, classes) == (WorldConfig().image_size, NUM_CLASSES):
            return []
        return [f"--setup.model.preset {self.model.preset}: radar-toy measures toy-world models "
                f"({WorldConfig().image_size} px images, {NUM_CLASSES} classes); this one makes {size} px images of "
                f"{classes} classes (radar-bench tradeoff measures any model)"]


def check_setup(cfg: MeasureConfig) -> None:
    """ValueError naming every option of `cfg` out of range (`MeasureConfig.problems`)."""
    problems = cfg.problems()
    if problems:
        raise ValueError("; ".join(problems))


def parse_method(spec: str, patch_nums: Optional[Sequence[int]] = None) -> AccelArgs:
    """The `AccelArgs` of a method spec ('fastvar:aggressive', 'fastvar:budget=0.5' with the model's patch_nums,
    'sca:default+mask_file=m.safetensors', ...): `radar_train.accel.spec.parse_spec`."""
    return parse_spec(spec, patch_nums)


def load_classifier(path: Optional[str] = None, device: torch.device | str = "cpu",
                    option: str = "--setup.classifier") -> ToyClassifier:
    """The toy classifier from `path` (default: the shipped file), in eval mode; InputError naming `option`
    and the file if it cannot be read or is not a toy classifier of NUM_CLASSES classes (every tensor of
    `ToyClassifier` at its shape, nothing else)."""
    p = Path(path) if path else WEIGHTS_DIR / CLASSIFIER_FILE
    if not p.is_file():
        what = "is a folder" if p.is_dir() else "not found"
        raise InputError(f"{option} {p}: classifier weights {what} (radar-toy train writes {CLASSIFIER_FILE})")
    try:
        sd = read_state_dict(p)
    except InputError as e:
        raise InputError(f"{option} {e}") from None
    first = sd.get("features.0.0.weight")
    if first is None or first.ndim != 4 or first.shape[0] < 1:
        raise InputError(f"{option} {p}: not a toy classifier (radar-toy train's {CLASSIFIER_FILE}): no "
                         f"first convolution features.0.0.weight")
    width = int(first.shape[0])
    with torch.device("meta"):  # the shapes, without allocating a model of whatever width the file claims
        want = ToyClassifier(width=width).state_dict()
    missing, extra = sorted(set(want) - set(sd)), sorted(set(sd) - set(want))
    wrong = [f"{k} has shape {list(sd[k].shape)}, a toy classifier of width {width} and {NUM_CLASSES} "
             f"classes {list(want[k].shape)}" for k in want if k in sd and sd[k].shape != want[k].shape]
    if missing or extra or wrong:
        detail = wrong[:1] + ([f"missing {', '.join(missing[:3])}{' ...' if len(missing) > 3 else ''}"]
                              if missing else [])
        detail += [f"unexpected {', '.join(extra[:3])}{' ...' if len(extra) > 3 else ''}"] if extra else []
        raise InputError(f"{option} {p}: not a toy classifier (radar-toy train's {CLASSIFIER_FILE}): "
                         f"{'; '.join(detail)}")
    model = ToyClassifier(width=width)
    model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in sd.items()})
    return model.to(device).eval()


def sample_plan(cfg: MeasureConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """Labels and seeds of the measured samples: `images_per_class` per class, interleaved, seeds from
    `base_seed` on."""
    n = NUM_CLASSES * cfg.images_per_class
    return torch.arange(n) % NUM_CLASSES, cfg.base_seed + torch.arange(n)


@torch.no_grad()
def sample_fhat(sampler: NextScaleSampler, labels: torch.Tensor, seeds: torch.Tensor, batch_size: int,
                accel: Optional[AccelMethod] = None) -> torch.Tensor:
    """Final f_hat of every sample (batches of `batch_size`), vanilla or with `accel`."""
    out = []
    for i in range(0, labels.shape[0], batch_size):
        res = sampler.sample(labels[i:i + batch_size], seeds=seeds[i:i + batch_size].tolist(), accel=accel)
        out.append(res.f_hat)
    return torch.cat(out)


@torch.no_grad()
def decode01(decoder: torch.nn.Module, f_hat: torch.Tensor, batch_size: int = 100,
             labels: Optional[torch.Tensor] = None) -> torch.Tensor:
    """f_hat -> images in [0, 1] with a VQVAE or a (possibly adapted) LatentDecoder; `labels` (one per latent)
    for a label-conditioned adapter (required there, ignored by the others)."""
    from radar_train.export import decode_with_labels

    def fn(i: int) -> torch.Tensor:
        f = f_hat[i:i + batch_size]
        if isinstance(decoder, VQVAE):
            return decoder.fhat_to_img(f)
        return decode_with_labels(decoder, f, None if labels is None else labels[i:i + batch_size]).clamp(-1, 1)

    return torch.cat([fn(i).add(1).mul(0.5) for i in range(0, f_hat.shape[0], batch_size)])


def check_adapter_folders(folders: Sequence[str]) -> None:
    """FileNotFoundError naming --setup.adapters and the first of `folders` that is not a folder (before any
    model loads; what is in a folder is checked as it loads)."""
    for folder in folders:
        if not Path(folder).is_dir():
            what = "not found" if not Path(folder).exists() else "not a folder"
            raise FileNotFoundError(f"--setup.adapters: {folder}: adapter folder {what}")


def load_adapted_decoder(vqvae: VQVAE, adapter_dir: str, identity: ModelIdentity,
                         num_classes: int = NUM_CLASSES) -> torch.nn.Module:
    """A copy of the VQ-VAE's decoder with the adapter merged in (a label-conditioned adapter: a
    LabelConditionedDecoder, which `decode01` calls with the labels; refused if not of `num_classes` classes)."""
    from radar_train.export import load_adapter

    check_adapter_folders([adapter_dir])
    try:
        return load_adapter(vqvae.latent_decoder().eval(), adapter_dir, identity=identity, merge=True,
                            num_classes=num_classes).eval()
    except ValueError as e:  # (an adapter of another model's VQ-VAE or class count: said as the option's)
        raise ValueError(f"--setup.adapters: {e}") from None


_SEED_SUFFIX = re.compile(r"^(.+?)[_-](?:s|seed)?\d+$")


def adapter_group(name: str) -> str:
    """The group of an adapter name: the name without a trailing seed suffix `_s<N>`, `_seed<N>` or `_<N>`
    (also with '-'): 'paa_s0', 'paa_s1' -> 'paa'; 'radar_seed2' -> 'radar'; 'label' -> 'label'."""
    m = _SEED_SUFFIX.match(name)
    return m.group(1) if m else name


def adapter_table(adapters: dict[str, AdapterSpec], methods: Sequence[str], option: str = "--setup.adapters",
                  listed_in: str = "--setup.methods") -> dict[str, dict[str, str]]:
    """{setting: {adapter name: folder}} from the option's value: a folder alone is named 'paa', a mapping
    keeps its names. ValueError for a setting that is not measured (`listed_in`: the option listing them) or a
    malformed entry."""
    unknown = sorted(set(adapters) - set(methods))
    if unknown:
        raise ValueError(f"{option}: adapters given for {unknown}, which are not in {listed_in} {list(methods)}")
    table: dict[str, dict[str, str]] = {}
    for spec, value in adapters.items():
        named = {DEFAULT_ADAPTER_NAME: value} if isinstance(value, (str, Path)) else value
        if not isinstance(named, dict) or not named:
            raise ValueError(f"{option}: {spec!r} needs an adapter folder or a non-empty mapping name -> folder, "
                             f"got {value!r}")
        for name, folder in named.items():
            if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
                raise ValueError(f"{option}: adapter name {name!r} of {spec!r} must be letters, digits, _ . -")
            if not isinstance(folder, (str, Path)) or not str(folder):
                raise ValueError(f"{option}: adapter {name!r} of {spec!r} needs a folder, got {folder!r}")
        table[spec] = {name: str(folder) for name, folder in named.items()}
    return table


def group_summary(rows: dict[str, dict]) -> dict[str, dict]:
    """Per adapter group (`adapter_group` of the row names): its adapters and, for every number the rows
    share, mean, sample standard deviation (None for one adapter), min and max."""
    groups: dict[str, list[str]] = {}
    for name in rows:
        groups.setdefault(adapter_group(name), []).append(name)
    out = {}
    for group, names in groups.items():
        summary: dict = {"adapters": names, "n": len(names)}
        for key, value in rows[names[0]].items():
            if not isinstance(value, (int, float)) or isinstance(value, bool):
                continue
            vals = [rows[n][key] for n in names if isinstance(rows[n].get(key), (int, float))
                    and math.isfinite(rows[n][key])]
            if vals:
                summary[key] = {"mean": _r(statistics.fmean(vals)),
                                "std": _r(statistics.stdev(vals)) if len(vals) > 1 else None,
                                "min": _r(min(vals)), "max": _r(max(vals))}
        out[group] = summary
    return out


def _r(x: Optional[float], digits: int = 4) -> Optional[float]:
    return None if x is None else round(float(x), digits)


def sharpness_vs(images01: torch.Tensor, reference01: torch.Tensor) -> float:
    """Mean high-frequency energy (`high_frequency_energy`) of the images over that of the reference images:
    1 as sharp as the reference, below 1 smoother (e.g. a decoder that draws the mean of the plausible images)."""
    return float(high_frequency_energy(images01).mean() / high_frequency_energy(reference01).mean().clamp_min(1e-12))


def quality_vs_vanilla(images01: torch.Tensor, vanilla01: torch.Tensor, f_hat: Optional[torch.Tensor] = None,
                       f_hat_vanilla: Optional[torch.Tensor] = None) -> dict[str, float]:
    """Mean PSNR (dB) and SSIM of each image against the vanilla image of the same label and seed, the
    sharpness relative to the vanilla images (`sharpness_vs`) and, given both latents, the mean relative latent
    distance ‖f − f_vanilla‖ / ‖f_vanilla‖ per sample."""
    out = {"psnr_vs_vanilla": _r(psnr_per_image(images01, vanilla01).mean()),
           "ssim_vs_vanilla": _r(ssim_per_image(images01, vanilla01).mean()),
           "sharpness_vs_vanilla": _r(sharpness_vs(images01, vanilla01))}
    if f_hat is not None and f_hat_vanilla is not None:
        d = (f_hat.float() - f_hat_vanilla.float()).flatten(1).norm(dim=1)
        out["latent_distance"] = _r((d / f_hat_vanilla.float().flatten(1).norm(dim=1).clamp_min(1e-12)).mean())
    return out


def restoration(vanilla01: torch.Tensor, accelerated01: torch.Tensor, restored01: torch.Tensor,
                harmless01: Optional[torch.Tensor] = None) -> dict[str, float]:
    """methods.md §5.1 with T = vanilla, Q = accelerated, S = restored (and H = adapted decode of the vanilla
    latent): g_mse, delta_psnr, delta_ssim, psnr_harmless."""
    stats = RestorationStats()
    stats.update(vanilla01, accelerated01, restored01, harmless01)
    m = stats.compute()
    out = {"g_mse": _r(m["gap_closed_mse"]), "delta_psnr": _r(m["delta_psnr"]), "delta_ssim": _r(m["delta_ssim"])}
    if "psnr_harmless" in m:
        out["psnr_harmless"] = _r(m["psnr_harmless"])
    return out


def fid_gaps(accelerated: dict, restored: dict, vanilla: dict) -> dict[str, Optional[float]]:
    """FID gap closed (FID_acc − FID_acc+PAA) / (FID_acc − FID_vanilla) against the real renders and against
    the vanilla samples (where FID_vanilla = 0), from rows holding toy_fid / toy_fid_vs_vanilla."""
    out = {"fid_gap_closed": _r(fid_gap_closed(accelerated.get("toy_fid"), restored.get("toy_fid"),
                                               vanilla.get("toy_fid")))}
    if "toy_fid_vs_vanilla" in restored:
        out["fid_gap_closed_vs_vanilla"] = _r(fid_gap_closed(accelerated.get("toy_fid_vs_vanilla"),
                                                             restored["toy_fid_vs_vanilla"], 0.0))
    return out


def flat_rows(report: dict) -> list[dict]:
    """The runs as one flat list (vanilla, each setting, each adapter), each with `run`, `setting` and
    `adapter` (None without one) beside its metrics: the same values as the nested view, for tables."""
    out = [{"run": "vanilla", "setting": "vanilla", "adapter": None, **report["vanilla"]}]
    for spec, row in report["methods"].items():
        out.append({"run": spec, "setting": spec, "adapter": None,
                    **{k: v for k, v in row.items() if k not in ("adapters", "groups")}})
        for name, r in row.get("adapters", {}).items():
            out.append({"run": f"{spec} + {name}", "setting": spec, "adapter": name, **r})
    return out


def run_measure(cfg: MeasureConfig, output: Optional[str] = None, overwrite: bool = False,
                command: str = "radar-toy measure") -> dict:
    """Measure everything in `cfg`; writes metrics.json, metrics.md and toyworld_grid.png to `output`
    if given (existing ones only with `overwrite`). Returns the metrics plus their markdown table under
    'markdown'. `command` names the progress lines (radar-toy masks measures through this too)."""
    check_setup(cfg)
    table = adapter_table(cfg.adapters, cfg.methods)
    folders = [f for named in table.values() for f in named.values()]
    if output is not None:
        check_output_dir(output, OUTPUT_FILES, "--output", overwrite=overwrite,
                         inputs={"--setup.adapters": folders, "--setup.classifier": cfg.classifier,
                                 "--setup.model.vae_checkpoint": cfg.model.vae_checkpoint,
                                 "--setup.model.var_checkpoint": cfg.model.var_checkpoint})
    check_adapter_folders(folders)
    clf = load_classifier(cfg.classifier)
    torch.set_num_threads(cfg.num_threads)
    m = cfg.model
    vqvae, var, vae_id, var_id = load_models(m.preset, m.vae_checkpoint, m.var_checkpoint, init_seed=m.init_seed)
    accels = build_specs(cfg.methods, var, var_id, "--setup.methods")
    adapted = {spec: {name: load_adapted_decoder(vqvae, folder, vae_id, num_classes=var.num_classes)
                      for name, folder in named.items()} for spec, named in table.items()}
    labels, seeds = sample_plan(cfg)
    n = labels.shape[0]
    log.info("measuring %d runs of %d samples (vanilla + %d settings) and %d adapted decodes", 1 + len(accels), n,
             len(accels), len(folders))
    from radar_train.bench.record import environment

    report: dict = {**environment(torch.device("cpu")), "config": asdict(cfg), "sampling": vars(cfg.sampling) | {},
                    "images_per_class": cfg.images_per_class, "num_samples": n, "base_seed": cfg.base_seed}

    held = make_bank(HELDOUT_SEED, cfg.num_heldout_images)
    report["reconstruction"] = reconstruction_psnr(vqvae, held)
    log.info("reconstruction PSNR %.2f dB", report["reconstruction"]["psnr_db"])
    fid = ToyFID(clf, cfg.fid_reference_images)
    report["toy_fid"] = fid.describe(n) | {"baselines": {k: _r(v) for k, v in fid.baselines(n, vqvae).items()}}
    log.info("toy FID baselines (%d samples): %s", n, report["toy_fid"]["baselines"])

    runs = Progress(1 + len(accels), command, "runs", rate_unit="run", interval_s=0, mode=log_mode(),
                    emit=log.info)  # a line after each run: runs done, time per run, ETA
    sampler = NextScaleSampler(var, vqvae.quantize, cfg.sampling)
    fhat_hq = sample_fhat(sampler, labels, seeds, cfg.batch_size)
    img_hq = decode01(vqvae, fhat_hq)
    report["vanilla"] = {"class_accuracy": _r(accuracy(clf, img_hq, labels)),
                         **{k: _r(v) for k, v in fid.set_vanilla(img_hq).items()}, "toy_fid_vs_vanilla": 0.0,
                         "sharpness_vs_vanilla": 1.0}
    recon = reconstruct_bank(vqvae, held)
    report["sharpness"] = {
        "measure": "sharpness_vs_vanilla: mean squared 3x3 Laplacian response of a run's images over the vanilla "
                   "samples' (1 = as much fine detail as vanilla, < 1 smoother)",
        "baselines": {"real_renders": _r(sharpness_vs(held.images.float() / 255, img_hq)),
                      "vqvae_reconstructions": _r(sharpness_vs(recon.images.float() / 255, img_hq))}}
    log.info("vanilla: %s", report["vanilla"])
    runs.update(1)
    columns, titles = [img_hq[:cfg.grid_samples]], ["vanilla"]
    report["methods"] = {}
    for spec, accel in accels.items():
        fhat_lq = sample_fhat(sampler, labels, seeds, cfg.batch_size, accel)
        img_lq = decode01(vqvae, fhat_lq)
        row = {"class_accuracy": _r(accuracy(clf, img_lq, labels)),
               **quality_vs_vanilla(img_lq, img_hq, fhat_lq, fhat_hq),
               **{k: _r(v) for k, v in fid.measure(img_lq).items()}}
        columns.append(img_lq[:cfg.grid_samples])
        titles.append(spec)
        log.info("%s: %s", spec, row)
        rows = {}
        for name, decoder in adapted.get(spec, {}).items():
            img_s = decode01(decoder, fhat_lq, labels=labels)
            r = {"adapter_dir": table[spec][name], "group": adapter_group(name),
                 "class_accuracy": _r(accuracy(clf, img_s, labels)), **quality_vs_vanilla(img_s, img_hq),
                 **{k: _r(v) for k, v in fid.measure(img_s).items()},
                 **restoration(img_hq, img_lq, img_s, decode01(decoder, fhat_hq, labels=labels))}
            rows[name] = r | fid_gaps(row, r, report["vanilla"])
            if name == next(nm for nm in table[spec] if adapter_group(nm) == r["group"]):
                columns.append(img_s[:cfg.grid_samples])  # the grid shows the first adapter of each group
                titles.append(f"{spec}+{name}")
            log.info("%s + %s: %s", spec, name, rows[name])
        if rows:
            row["adapters"] = rows
            row["groups"] = group_summary(rows)
        report["methods"][spec] = row
        runs.update(1)
    runs.close()
    report["rows"] = flat_rows(report)
    report["markdown"] = markdown_table(report)
    if output is not None:
        with staged_entries(output, OUTPUT_FILES, overwrite) as stage:
            write_report(stage, "metrics", report)
            rows = [[to_uint8(col[r:r + 1])[0] for col in columns] for r in range(min(cfg.grid_samples, n))]
            names = [f"{CLASS_NAMES[int(labels[r])]}" for r in range(len(rows))]
            save_grid(rows, stage / "toyworld_grid.png", col_titles=_short(titles), row_titles=names, scale=2)
    return report


def _short(titles: list[str]) -> list[str]:
    return [t.replace("fastvar", "fv").replace("stagevar", "sv").replace("aggressive", "aggr")
            .replace("default", "def") for t in titles]


def _fmt(v, kind: str) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "–"
    return {"db": fixed(v, 2), "pct": f"{fixed(v, 1, scale=100)} %", "fid": fixed(v, 2),
            "signed": fixed(v, 2, sign=True), "ratio": fixed(v, 3)}[kind]


def _cell(row: dict, key: str, kind: str) -> str:
    """A table cell: a value, or for a group summary mean ± sd."""
    v = row.get(key)
    if isinstance(v, dict):
        mean, sd = _fmt(v["mean"], kind), v.get("std")
        if sd is None:
            return mean
        return f"{mean} ± {_fmt(sd, kind).lstrip('+').replace(' %', '')}{' %' if kind == 'pct' else ''}"
    return _fmt(v, kind)


TABLE_COLUMNS = (("psnr_vs_vanilla", "db"), ("class_accuracy", "pct"), ("toy_fid", "fid"), ("toy_fid_vs_vanilla", "fid"),
            ("g_mse", "pct"), ("delta_psnr", "signed"), ("fid_gap_closed", "pct"), ("fid_gap_closed_vs_vanilla", "pct"),
            ("sharpness_vs_vanilla", "ratio"))


def markdown_table(report: dict) -> str:
    """The metrics as a markdown table: one row per run, per adapter, and per group of several adapters
    (mean ± sample standard deviation)."""
    rec, tf = report["reconstruction"], report["toy_fid"]
    base = tf.get("baselines", {})
    lines = [f"VQ-VAE reconstruction PSNR on {rec['num_images']} held-out toy images: {rec['psnr_db']:.2f} dB", "",
             f"Toy FID: {tf['num_samples']} samples per run, {tf['features']}, against "
             f"{tf['reference']['num_images']} real toy renders (toy-world set {tf['reference']['world_seed']}); "
             f"{tf['num_samples']} other real renders score {_fmt(base.get('real_renders'), 'fid')} (the floor at "
             f"this count), their VQ-VAE reconstructions {_fmt(base.get('vqvae_reconstructions'), 'fid')}.", ""]
    sharp = report.get("sharpness", {}).get("baselines", {})
    if sharp:
        lines += [f"Sharpness (fine-detail energy over the vanilla samples'): real renders "
                  f"{_fmt(sharp.get('real_renders'), 'ratio')}, their VQ-VAE reconstructions "
                  f"{_fmt(sharp.get('vqvae_reconstructions'), 'ratio')}.", ""]
    lines += ["| run | PSNR vs vanilla (dB) | class accuracy | toy FID | toy FID vs vanilla | gap closed G_mse "
              "| ΔPSNR (dB) | FID gap closed | FID gap closed (vs vanilla) | sharpness vs vanilla |",
              "| --- |" + " ---: |" * len(TABLE_COLUMNS)]

    def line(name: str, row: dict) -> str:
        return f"| {name} | " + " | ".join(_cell(row, k, kind) for k, kind in TABLE_COLUMNS) + " |"

    lines.append(line("vanilla", {"toy_fid_vs_vanilla": 0.0, **report["vanilla"]}))
    for spec, row in report["methods"].items():
        lines.append(line(spec, row))
        for name, r in row.get("adapters", {}).items():
            lines.append(line(f"{spec} + {name}", r))
        for group, g in row.get("groups", {}).items():
            if g["n"] > 1:
                lines.append(line(f"{spec} + {group} (mean ± sd of {g['n']})", g))
    lines += ["", "Notes:", ""] + [f"- {x}" for x in tf["notes"]]
    return "\n".join(lines)
