"""A stand-in device for ``bench/encoders.py --device sim`` (a bench-only mmprep plugin).

The encoders here are the real ``vae``, ``clip-text`` and ``t5`` encoders with one change:
the model's forward pass is replaced by a wait of the time a GPU of a given speed would
take, spent in ``time.sleep`` (which releases the GIL, as waiting on a CUDA stream does).
Everything on the host stays real: decode, resize, crop, noise, tokenisation, batching,
prefetch, the finiteness check, serialisation to bytes, and in a pipeline run the plan,
the input read, the writers and the commit. The figures they give say how much of a GPU's
time the CPU side of mmprep on *this* machine can keep busy; they say nothing about the
GPU kernels themselves.

Device time per batch:
  * VAE: ``batch * (r / 512)**2 / sim_rate_512`` seconds (convolutions scale with pixels);
    the default 715 images/s at 512² is issue 7's H100 FLOP ceiling for the SDXL VAE encoder.
  * text: ``2 * batch * tokens * layer_params / (sim_tflops * 1e12)`` with
    ``layer_params = layers * (4 d² + 2 d d_ff)`` (attention + MLP weights).
"""

from __future__ import annotations

import time

from pydantic import Field

from mmprep import hookimpl
from mmprep_encoders.text import ClipTextEncoder, ClipTextOptions, T5Options, T5TextEncoder
from mmprep_encoders.vae import VaeEncoder, VaeOptions


def vae_seconds(n: int, r: int, rate_512: float) -> float:
    """Simulated device seconds for ``n`` VAE encodes at ``r``²."""
    return n * (r / 512) ** 2 / rate_512


def text_seconds(config: dict, n: int, tokens: int, tflops: float) -> float:
    """Simulated device seconds for ``n`` texts of ``tokens`` tokens through the model of ``config``."""
    c = config.get("text_config", config)
    d = int(c.get("hidden_size") or c.get("d_model"))
    ff = int(c.get("intermediate_size") or c.get("d_ff") or 4 * d)
    layers = int(c.get("num_hidden_layers") or c.get("num_layers"))
    return 2.0 * n * tokens * layers * (4 * d * d + 2 * d * ff) / (tflops * 1e12)


class SimVaeOptions(VaeOptions):
    sim_rate_512: float = Field(default=715.0, gt=0, description="Simulated device speed: images/s at 512x512")


class SimVaeEncoder(VaeEncoder):
    """The vae encoder with its forward pass replaced by the wait of a simulated device."""

    name = "sim-vae"
    Options = SimVaeOptions

    def load(self, device: str) -> None:
        self.model = "simulated"
        self.start_pool()

    def forward(self, batch):
        import torch

        n, out = batch["n"], {}
        for name, r in zip(self.column_names(), self.options.resolutions):
            time.sleep(vae_seconds(n, r, self.options.sim_rate_512))
            out[name] = torch.zeros((n, *self.output_columns()[name]["shape"]))
        return out


class _SimText:
    """Mixin: tokenise for real, wait instead of the forward pass."""

    def load(self, device: str) -> None:
        self.tokenizer = self.load_tokenizer()
        self.model = "simulated"

    def run_model(self, ids, mask, lengths):
        import torch

        n, tokens = ids.shape
        time.sleep(text_seconds(self.config, n, tokens, self.options.sim_tflops))
        return torch.zeros((n, tokens, self.hidden_size()))


class SimClipOptions(ClipTextOptions):
    sim_tflops: float = Field(default=400.0, gt=0, description="Simulated device speed (dense TFLOP/s)")


class SimT5Options(T5Options):
    sim_tflops: float = Field(default=400.0, gt=0, description="Simulated device speed (dense TFLOP/s)")
    store_pad_tokens: bool = True


class SimClipTextEncoder(_SimText, ClipTextEncoder):
    """The clip-text encoder with its forward pass replaced by the wait of a simulated device."""

    name = "sim-clip-text"
    Options = SimClipOptions


class SimT5TextEncoder(_SimText, T5TextEncoder):
    """The t5 encoder (pad tokens kept) with its forward pass replaced by the wait of a simulated device."""

    name = "sim-t5"
    Options = SimT5Options


@hookimpl
def register_encoders(register):
    for cls in (SimVaeEncoder, SimClipTextEncoder, SimT5TextEncoder):
        register(cls)
