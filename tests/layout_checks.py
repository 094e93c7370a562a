"""Shared by the CPU and CUDA tests of `Decoder.channels_last`."""
import torch


def decode_with_layout(inner, decode, f_hat: torch.Tensor, setting):
    """(whether conv_in saw a channels-last (non-NCHW) input, once per decode; the decode with the default setting;
    the decode with `setting`). `inner` is the Decoder, `decode` the call that runs it; the setting is restored."""
    seen = []
    hook = inner.conv_in.register_forward_pre_hook(
        lambda m, args: seen.append(args[0].is_contiguous(memory_format=torch.channels_last)
                                    and not args[0].is_contiguous()))
    try:
        with torch.inference_mode():
            ref = decode(f_hat)
            inner.channels_last = setting
            img = decode(f_hat)
    finally:
        hook.remove()
        inner.channels_last = None
    return seen, ref, img
