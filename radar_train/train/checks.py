"""Cross-stage checks: does a cache fit the decoder a training run is given?"""
from __future__ import annotations

import json
from typing import Optional, Sequence

from radar_train.models import ModelIdentity

__all__ = ["cache_mismatches", "check_cache_matches"]


def _norm(d) -> object:
    return json.loads(json.dumps(d))


def cache_mismatches(manifest, identity: ModelIdentity, latent_shape: Sequence[int],
                     num_classes: Optional[int] = None) -> list[str]:
    """Reasons why a cache (its Manifest) cannot train the decoder with `identity` taking latents of
    `latent_shape` [C, h, w] (and, given `num_classes`, a label conditioning of that many classes); empty if
    it can."""
    out = []
    if num_classes is not None:
        n = _num_classes((manifest.model or {}).get("preset"))
        if n is not None and n != num_classes:
            out.append(f"its labels are those of a generator of {n} classes but model.label_conditioning has "
                       f"{num_classes}")
    if [int(x) for x in manifest.latent_shape] != [int(x) for x in latent_shape]:
        out.append(f"its latents are {list(manifest.latent_shape)} but the decoder takes {list(latent_shape)}")
    vae = (manifest.model or {}).get("vae")
    if not isinstance(vae, dict) or "kind" not in vae:
        out.append("its manifest names no VQ-VAE (model.vae)")
        return out
    if (vae["kind"], vae["value"]) != (identity.kind, identity.value):
        out.append(f"it was made with the VQ-VAE {vae['kind']}:{vae['value']} "
                   f"but the decoder is {identity.kind}:{identity.value}")
    elif _norm(vae.get("config")) != _norm(identity.config):
        diff = sorted(k for k in set(vae.get("config") or {}) | set(identity.config)
                      if _norm((vae.get("config") or {}).get(k)) != _norm(identity.config.get(k)))
        out.append(f"its VQ-VAE config differs from the decoder's in {', '.join(diff)}")
    return out


def _num_classes(preset) -> Optional[int]:
    from radar_train.models import get_preset

    try:
        return get_preset(preset).var.num_classes
    except (KeyError, ValueError, TypeError):
        return None


def check_cache_matches(cache_dir: str, manifest, identity: ModelIdentity, latent_shape: Sequence[int],
                        num_classes: Optional[int] = None) -> None:
    """ValueError (one line, naming the cache) if the cache does not fit the decoder (and its label
    conditioning of `num_classes` classes, if given)."""
    problems = cache_mismatches(manifest, identity, latent_shape, num_classes)
    if problems:
        preset = (manifest.model or {}).get("preset", "?")
        raise ValueError(f"cache {cache_dir} (model preset {preset}) does not match the decoder: "
                         + "; ".join(problems) + " — train with the cache's model (model.decoder.*) or another cache")
