"""Stage two: PAA training of LoRA adapters on the frozen VQ-VAE decoder from paired-latent caches."""
