"""radar-check-reference DIR: run a reference fixture's cases through our models."""
from __future__ import annotations

from jsonargparse import CLI


def check_reference(fixture_dir: str, device: str = "cpu") -> int:
    """Check the models against a fixture made with the official VAR code.

    Args:
        fixture_dir: directory with config.json, cases.json, cases.safetensors, vae.safetensors[.xz], var.safetensors.
        device: torch device to run on (TF32 is switched off on CUDA).
    """
    from radar_train.cli.common import check_device
    from radar_train.reference import check_fixture

    device = str(check_device(device))
    results, notes = check_fixture(fixture_dir, device)  # FixtureError / CheckpointError: run_main's one line
    for note in notes:
        print(f"# {note}")
    for r in results:
        print(r.line())
    n_pass = sum(r.passed for r in results)
    differs = [n.split()[0] for n in notes if "DIFFERS" in n]
    print(f"reference: {n_pass}/{len(results)} cases pass" + (f"; {', '.join(differs)} differs" if differs else ""))
    return 0 if n_pass == len(results) and not differs else 1


def main(argv: list[str] | None = None) -> None:
    from radar_train.cli.common import run_main

    run_main("radar-check-reference",
             lambda args: CLI(check_reference, args=args, as_positional=True, exit_on_error=False), argv)


if __name__ == "__main__":
    main()
