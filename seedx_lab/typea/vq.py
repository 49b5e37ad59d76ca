"""Type-A image tokenizer: a learned codebook (diffusers' ``VQModel``) at tiny widths.

An image ``[B, 3, 64, 64]`` (values in [0, 1]) is encoded to a grid of code indices ``[B, h, w]``
(``h = w = grid``, e.g. 4x4 = 16 or 8x8 = 64 codes) and decoded back from them. In Chameleon's design
these indices become ordinary tokens of the LLM's vocabulary (see :mod:`seedx_lab.typea.model`).

The encoder halves the resolution once per block after the first, so a 64-pixel image needs
``log2(64 / grid) + 1`` blocks; :meth:`VQConfig.for_grid` builds that list.

Training loss (:meth:`VQTokenizer.loss`): the project's reconstruction error
(:func:`seedx_lab.training.detok_losses.reconstruction_error`: object pixels weigh more, plus an L1 term) on the
quantised reconstruction, plus ``VectorQuantizer``'s codebook + commitment loss (its ``legacy`` form:
``|sg(z_q) - z|^2 + beta |z_q - sg(z)|^2``), gradients passed through the quantiser straight through.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn as nn

from ..training.detok_losses import reconstruction_error

IMAGE_SIZE = 64


@dataclass
class VQConfig:
    """Widths of the tiny ``VQModel``. ``grid``: code-grid side; ``codebook_size``: number of codes."""

    grid: int = 4
    codebook_size: int = 256
    block_out_channels: tuple = (32, 64, 64, 64, 64)
    layers_per_block: int = 1
    latent_channels: int = 32
    norm_num_groups: int = 16
    mid_block_add_attention: bool = True
    image_size: int = IMAGE_SIZE
    foreground_weight: float = 5.0       # as the seedx-tiny VAE (TrainConfig.vae_foreground_weight)
    l1_weight: float = 0.5
    commit_weight: float = 1.0
    vq_embed_dim: int | None = None      # codebook vectors' width (None: latent_channels); small widths use more codes

    def __post_init__(self):
        self.block_out_channels = tuple(self.block_out_channels)
        for name in ("grid", "codebook_size", "image_size"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive int, got {v!r}")
        ratio = self.image_size // self.grid
        if self.image_size % self.grid or ratio & (ratio - 1):
            raise ValueError(f"grid must divide image_size={self.image_size} by a power of two, got grid={self.grid}")
        need = int(math.log2(ratio)) + 1
        if len(self.block_out_channels) != need:
            raise ValueError(f"a {self.grid}x{self.grid} code grid from {self.image_size}-pixel images needs "
                             f"{need} encoder blocks, got block_out_channels={self.block_out_channels}")
        if any(c % self.norm_num_groups for c in self.block_out_channels):
            raise ValueError(f"every block width must be a multiple of norm_num_groups={self.norm_num_groups}, "
                             f"got {self.block_out_channels}")

    @classmethod
    def for_grid(cls, grid: int, codebook_size: int | None = None, **kw) -> "VQConfig":
        """Tiny widths for a ``grid`` x ``grid`` code grid (4 or 8 for the shipped arms; any power of two
        dividing 64). Codebook: 256 codes for 4x4, 512 for 8x8 unless given."""
        if isinstance(grid, bool) or not isinstance(grid, int) or grid < 1 or IMAGE_SIZE % grid \
                or (IMAGE_SIZE // grid) & (IMAGE_SIZE // grid - 1):
            raise ValueError(f"grid must be a power of two dividing {IMAGE_SIZE} (e.g. 4 or 8), got {grid!r}")
        n_blocks = int(math.log2(IMAGE_SIZE // grid)) + 1
        widths = (16, 32, 64, 64, 64, 64, 64)[:n_blocks]
        size = codebook_size if codebook_size is not None else (256 if grid <= 4 else 512)
        return cls(grid=grid, codebook_size=size, block_out_channels=widths, **kw)

    @property
    def num_codes(self) -> int:
        """Codes per image (``grid * grid``): the LLM tokens between ``<img>`` and ``</img>``."""
        return self.grid * self.grid

    def to_dict(self) -> dict:
        d = asdict(self)
        d["block_out_channels"] = list(self.block_out_channels)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "VQConfig":
        unknown = sorted(set(d) - set(cls.__dataclass_fields__))
        if unknown:
            raise ValueError(f"unknown VQConfig field(s) {unknown}")
        return cls(**d)


class VQTokenizer(nn.Module):
    """``VQModel`` with code-level ``encode`` / ``decode`` for images in [0, 1]."""

    def __init__(self, config: VQConfig | None = None, device=None, dtype=None):
        super().__init__()
        from diffusers import VQModel

        self.config = config = config or VQConfig()
        n = len(config.block_out_channels)
        with torch.device(device or "cpu"):      # diffusers constructors take no device
            self.vq = VQModel(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * n,
                              up_block_types=("UpDecoderBlock2D",) * n, block_out_channels=config.block_out_channels,
                              layers_per_block=config.layers_per_block, latent_channels=config.latent_channels,
                              num_vq_embeddings=config.codebook_size, norm_num_groups=config.norm_num_groups,
                              sample_size=config.image_size, mid_block_add_attention=config.mid_block_add_attention,
                              vq_embed_dim=config.vq_embed_dim)
        if dtype is not None:
            self.vq.to(dtype=dtype)

    @property
    def device(self) -> torch.device:
        return self.vq.quantize.embedding.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.vq.quantize.embedding.weight.dtype

    def _check_images(self, images) -> torch.Tensor:
        s = self.config.image_size
        if not isinstance(images, torch.Tensor) or images.dim() != 4 or tuple(images.shape[1:]) != (3, s, s):
            got = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
            raise ValueError(f"images must be a tensor [B, 3, {s}, {s}] with values in [0, 1], got {got}")
        return images.to(self.device, self.dtype) * 2 - 1

    def latents(self, images: torch.Tensor) -> torch.Tensor:
        """Images ``[B, 3, 64, 64]`` in [0, 1] -> unquantised latents ``[B, C, grid, grid]``."""
        return self.vq.encode(self._check_images(images)).latents

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Images ``[B, 3, 64, 64]`` in [0, 1] -> code indices ``[B, grid, grid]`` (long, in [0, codebook_size))."""
        h = self.latents(images)
        _, _, (_, _, idx) = self.vq.quantize(h)            # idx: [B * grid * grid], raster order per image
        return idx.view(h.shape[0], h.shape[2], h.shape[3]).long()

    def quantized(self, codes: torch.Tensor) -> torch.Tensor:
        """Codes ``[B, grid, grid]`` -> codebook vectors ``[B, C, grid, grid]``."""
        g, n = self.config.grid, self.config.codebook_size
        if not isinstance(codes, torch.Tensor) or codes.dim() != 3 or tuple(codes.shape[1:]) != (g, g):
            got = tuple(codes.shape) if isinstance(codes, torch.Tensor) else type(codes).__name__
            raise ValueError(f"codes must be a tensor [B, {g}, {g}], got {got}")
        if codes.is_floating_point() or (codes.numel() and (int(codes.min()) < 0 or int(codes.max()) >= n)):
            raise ValueError(f"codes must be integers in [0, {n}), got dtype {codes.dtype} "
                             f"and range [{codes.min().item()}, {codes.max().item()}]")
        b = codes.shape[0]
        return self.vq.quantize.get_codebook_entry(codes.reshape(-1).to(self.device).long(),
                                                   (b, g, g, self.vq.quantize.vq_embed_dim))

    @torch.no_grad()
    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """Codes ``[B, grid, grid]`` -> images ``[B, 3, 64, 64]`` in [0, 1]."""
        out = self.vq.decode(self.quantized(codes), force_not_quantize=True).sample
        return ((out.float() + 1) / 2).clamp(0, 1)

    def loss(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Training loss of a batch ``[B, 3, 64, 64]`` in [0, 1]: ``(total, reconstruction, codebook+commitment)``."""
        return self.loss_and_codes(images)[:3]

    def loss_and_codes(self, images: torch.Tensor):
        """:meth:`loss` plus what a dead-code restart needs: the batch's codes ``[B * grid * grid]`` and its
        unquantised latents ``[B * grid * grid, D]`` (detached)."""
        x = self._check_images(images)
        h = self.vq.encode(x).latents
        quant, commit, (_, _, idx) = self.vq.quantize(h)        # straight-through gradients
        out = self.vq.decode(quant, force_not_quantize=True)
        rec = reconstruction_error(out.sample, x, self.config.foreground_weight, self.config.l1_weight)
        commit = commit.float().mean()
        flat = h.detach().permute(0, 2, 3, 1).reshape(-1, h.shape[1])
        return rec + self.config.commit_weight * commit, rec, commit, idx.reshape(-1), flat

    @torch.no_grad()
    def restart_codes(self, dead: torch.Tensor, latents: torch.Tensor, generator=None) -> int:
        """Move the codebook entries ``dead`` (indices ``[k]``) onto latents drawn at random from ``latents``
        ``[M, D]`` (a batch's encoder outputs), so that unused codes come back where the encoder puts its
        vectors. Returns k."""
        if dead.numel() == 0:
            return 0
        pick = torch.randint(0, latents.shape[0], (dead.numel(),), generator=generator)
        w = self.vq.quantize.embedding.weight
        w[dead.to(w.device)] = latents[pick].to(w.device, w.dtype)
        return int(dead.numel())

    @torch.no_grad()
    def codebook_usage(self, images: torch.Tensor) -> float:
        """Fraction of the codebook used by the codes of ``images`` (a collapse shows as a small number)."""
        codes = self.encode(images)
        return codes.unique().numel() / self.config.codebook_size


def images_to_unit(images) -> torch.Tensor:
    """PIL image(s) (any size; stretched to 64x64, as Chameleon reads fixed-size images) -> ``[B, 3, 64, 64]`` in [0, 1]."""
    from ..images import to_pil_rgb, to_tensor

    if not isinstance(images, (list, tuple)):
        images = [images]
    out = []
    for im in images:
        im = to_pil_rgb(im)
        if im.size != (IMAGE_SIZE, IMAGE_SIZE):
            im = im.resize((IMAGE_SIZE, IMAGE_SIZE), resample=3)       # bicubic
        out.append(to_tensor(im, normalize=False))
    return torch.stack(out)


def unit_to_pil(images: torch.Tensor):
    """``[B, 3, H, W]`` in [0, 1] -> list of PIL images."""
    from PIL import Image

    arr = (images.detach().float().clamp(0, 1) * 255).round().byte().permute(0, 2, 3, 1).cpu().numpy()
    return [Image.fromarray(a) for a in arr]


@torch.no_grad()
def round_trip(vq: "VQTokenizer", image):
    """One picture through the tokenizer alone: image -> codes ``[1, grid, grid]`` -> decoded PIL image
    (64x64). What a Type-A model could draw at best for that picture; no LLM involved."""
    return unit_to_pil(vq.decode(vq.encode(images_to_unit(image).to(vq.device, vq.dtype))))[0]
