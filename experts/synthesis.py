"""The ``synthesis`` expert: fully synthetic faces (GAN / diffusion decoders), trained on pseudo-fakes only.

    from x2dfd.experts import load_expert
    expert = load_expert("synthesis")      # shipped weights, offline
    expert.score(faces)                    # [ExpertScore("synthesis", p_fake), ...]; localize -> None

No generated image is ever used for training. Real faces (faces-real-photos' training split) are passed
through small convolutional autoencoders trained here on those same faces (``UpsamplingAE``), one per
upsampling operator that image generators' decoders use (transposed convolution: GAN generators;
nearest + conv: latent-diffusion VAE decoders; bilinear + conv: StyleGAN2's filtered upsampling).
The reconstruction keeps the face and loses what a decoder cannot rebuild (sensor noise, fine
texture) while adding the decoder's upsampling traces; the classifier learns real vs reconstruction
(Zhang et al. 2019, "Detecting and simulating artifacts in GAN fake images", AutoGAN). The same
random crop, colour jitter and resize/blur/noise/JPEG are applied to a real face and its
reconstruction, so only the decoder's traces tell them apart.

Architecture, preprocessing, weight files and calibration are those of ``blend`` (EfficientNet-Lite0,
224 px, ``synthesis_efficientnet_lite0.safetensors`` + ``.json``); the mask head is trained towards
"everything" for pseudo-fakes but not used: ``localize`` returns None.

    python -m x2dfd.experts.synthesis --cache bench/out/blend_cache --out runs/synthesis   # train (GPU advised)
"""

from __future__ import annotations

import math
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Sequence

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from x2dfd.experts.blend import WEIGHTS_DIR, BlendConfig, BlendExpert, resize_face, to_tensor

DEFAULT_WEIGHTS = WEIGHTS_DIR / "synthesis_efficientnet_lite0.safetensors"
UPSAMPLERS = ("transposed", "nearest", "bilinear")


class SynthesisExpert(BlendExpert):
    """Fully-synthetic-face detector (see module docstring). ``localize`` is not supported."""

    name = "synthesis"
    prompt_name = "synthesis"
    default_weights = DEFAULT_WEIGHTS
    weights_prefix = "synthesis"

    #: what the recipe targets, and what its first training measured (bench/eval_experts.py), shown by
    #: info() when the weights' JSON carries no scope of its own
    default_scope = {
        "detects": "meant for fully synthetic faces (GAN / diffusion decoders' upsampling traces)",
        "does_not_detect": "face swaps (blended regions): use blend",
        "measured": "first training (600 faces, 2 epochs, H200): AUC 0.091 on StyleGAN2 vs Unsplash real (anti-correlated: "
                    "it learnt 'less fine detail = reconstruction', and the 300 px Unsplash JPEGs have less than the "
                    "StyleGAN2 faces), 0.50-0.61 on classical swaps; no weights are shipped",
    }

    def localize(self, faces: Sequence[Any]) -> None:
        return None

    def info(self) -> dict[str, Any]:
        out = super().info()
        out["scope"] = self.scope or self.default_scope
        return out


# ------------------------------------------------------------------------------ pseudo-fake decoders


class UpsamplingAE(nn.Module):
    """Conv encoder (3 stride-2 stages, /8) and a decoder with 3 x2 upsamplings of one kind."""

    def __init__(self, upsampler: str = "transposed", width: int = 64):
        super().__init__()
        if upsampler not in UPSAMPLERS:
            raise ValueError(f"upsampler must be one of {UPSAMPLERS}, got {upsampler!r}")
        c = [width, width * 2, width * 4]
        act = lambda: nn.LeakyReLU(0.2, inplace=True)  # noqa: E731
        enc: list[nn.Module] = [nn.Conv2d(3, c[0], 3, padding=1), act()]
        for cin, cout in ((c[0], c[0]), (c[0], c[1]), (c[1], c[2])):
            enc += [nn.Conv2d(cin, cout, 4, stride=2, padding=1), act(), nn.Conv2d(cout, cout, 3, padding=1), act()]
        self.encoder = nn.Sequential(*enc)
        dec: list[nn.Module] = []
        for cin, cout in ((c[2], c[1]), (c[1], c[0]), (c[0], c[0])):
            if upsampler == "transposed":
                dec += [nn.ConvTranspose2d(cin, cout, 4, stride=2, padding=1), act()]
            else:
                dec += [nn.Upsample(scale_factor=2, mode=upsampler), nn.Conv2d(cin, cout, 3, padding=1), act()]
            dec += [nn.Conv2d(cout, cout, 3, padding=1), act()]
        dec += [nn.Conv2d(c[0], 3, 3, padding=1)]
        self.decoder = nn.Sequential(*dec)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x in [-1, 1]
        return torch.tanh(self.decoder(self.encoder(x)))


def _to_unit(x: torch.Tensor) -> torch.Tensor:
    return x.float().div(127.5).sub(1.0)


def train_autoencoders(faces: torch.Tensor, device: str, steps: int = 600, batch: int = 32, crop: int = 128,
                       seed: int = 0, log=print) -> dict[str, UpsamplingAE]:
    """One ``UpsamplingAE`` per upsampler on random crops of ``faces`` (N x 3 x S x S uint8)."""
    g = torch.Generator().manual_seed(seed)
    models = {}
    data = faces.to(device)
    n, _, size, _ = data.shape
    for k, kind in enumerate(UPSAMPLERS):
        torch.manual_seed(seed + k)
        ae = UpsamplingAE(kind).to(device)
        opt = torch.optim.Adam(ae.parameters(), lr=2e-4, betas=(0.5, 0.99))
        t0 = time.time()
        for step in range(steps):
            idx = torch.randint(n, (batch,), generator=g)
            y0, x0 = (int(v) for v in torch.randint(size - crop + 1, (2,), generator=g))
            x = _to_unit(data[idx.to(device), :, y0 : y0 + crop, x0 : x0 + crop])
            loss = F.l1_loss(ae(x), x)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if step % 200 == 0 or step == steps - 1:
                log(f"AE {kind}: step {step + 1}/{steps} L1 {loss.item():.4f} ({time.time() - t0:.0f} s)")
        models[kind] = ae.eval()
    return models


@torch.inference_mode()
def reconstruct(models: dict[str, UpsamplingAE], faces: torch.Tensor, device: str, batch: int = 64) -> torch.Tensor:
    """Each face through one autoencoder (face i -> UPSAMPLERS[i % 3]): N x 3 x S x S uint8 on CPU."""
    out = torch.empty_like(faces)
    kinds = list(models)
    for i in range(0, len(faces), batch):
        x = _to_unit(faces[i : i + batch].to(device))
        for j in range(len(x)):
            ae = models[kinds[(i + j) % len(kinds)]]
            y = ae(x[j : j + 1])
            out[i + j] = y.add(1).mul(127.5).round().clamp(0, 255).to(torch.uint8).cpu()[0]
    return out


# ------------------------------------------------------------------------------ classifier training


def face_arrays(crop_paths: Sequence[str], size: int = 256, scale: float = 1.5, cache_scale: float = 1.8) -> np.ndarray:
    """Centre crops (``scale`` / ``cache_scale`` of each cached crop), resized to ``size``: N x S x S x 3 uint8."""
    out = np.empty((len(crop_paths), size, size, 3), np.uint8)
    for i, p in enumerate(crop_paths):
        img = cv2.cvtColor(cv2.imread(str(p), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
        h, w = img.shape[:2]
        s = int(round(min(h, w) * scale / cache_scale))
        y0, x0 = (h - s) // 2, (w - s) // 2
        out[i] = resize_face(np.ascontiguousarray(img[y0 : y0 + s, x0 : x0 + s]), size)
    return out


def _pair_view(real: np.ndarray, fake: np.ndarray, rng: np.random.Generator, size: int, degrade: bool):
    from x2dfd.experts.sbi import augment_pair, degrade_pair

    real, fake = augment_pair(real, fake, rng)
    side = real.shape[0]
    s = int(round(side * rng.uniform(1.15, 1.5) / 1.5))
    y0, x0 = (int(v) for v in rng.integers(0, side - s + 1, 2))
    real, fake = (resize_face(np.ascontiguousarray(a[y0 : y0 + s, x0 : x0 + s]), size) for a in (real, fake))
    if rng.random() < 0.5:
        real, fake = real[:, ::-1], fake[:, ::-1]
    if degrade:
        real, fake = degrade_pair(np.ascontiguousarray(real), np.ascontiguousarray(fake), rng)
    return np.ascontiguousarray(real), np.ascontiguousarray(fake)


def train_classifier(real: np.ndarray, fake: np.ndarray, val_real: np.ndarray, val_fake: np.ndarray, device: str,
                     init_weights: str | Path | None = None, epochs: int = 10, batch: int = 32, lr: float = 3e-4,
                     seed: int = 0, degrade: bool = True, threads: int = 8, time_budget_s: float | None = None,
                     log=print) -> tuple[SynthesisExpert, list[dict[str, Any]]]:
    """EfficientNet-Lite0 real (0) vs reconstruction (1), pairs of the same face in each batch."""
    from x2dfd.experts.train import _loss, _lr_at
    from x2dfd.metrics import roc_auc

    config = BlendConfig(backbone="efficientnet_lite0", backbone_kwargs={"pretrained": False}, image_size=224)
    expert = SynthesisExpert.from_config(config)
    model = expert.model
    if hasattr(model.backbone, "config_kwargs"):
        config.backbone_kwargs = dict(model.backbone.config_kwargs)
    if init_weights:
        from x2dfd.experts.train import load_init_weights

        log(f"init: {load_init_weights(model, init_weights, config.backbone)}")
    model.to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    n = len(real)
    steps_per_epoch = math.ceil(n / batch)
    total = steps_per_epoch * epochs
    pool = ThreadPoolExecutor(threads)
    size = config.image_size

    def views(idx, epoch, train=True):
        def one(i):
            rng = np.random.default_rng([seed, epoch, int(i)] if train else [seed, 999, int(i)])
            if train:
                return _pair_view(real[i], fake[i], rng, size, degrade)
            return resize_face(val_real[i], size), resize_face(val_fake[i], size)
        pairs = list(pool.map(one, idx))
        return [p[0] for p in pairs], [p[1] for p in pairs]

    history: list[dict[str, Any]] = []
    step, epoch, t_start = 0, 0, time.time()
    while epoch < epochs:
        t0 = time.time()
        model.train()
        perm = np.random.default_rng([seed, epoch]).permutation(n)
        loss_sum = 0.0
        for b in range(steps_per_epoch):
            r, f = views(perm[b * batch : (b + 1) * batch], epoch)
            x = to_tensor(r + f, config.mean, config.std).to(device)
            y = torch.cat([torch.zeros(len(r)), torch.ones(len(f))]).to(device)
            masks = y.view(-1, 1, 1, 1).expand(-1, 1, size, size)
            for g_ in opt.param_groups:
                g_["lr"] = _lr_at(step, total, lr, 100)
            logits, mask_logits = model(x)
            loss = _loss(logits, mask_logits, y, masks, 0.2)[0]
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            loss_sum += loss.item()
        model.eval()
        ps, ys = [], []
        with torch.inference_mode():
            for b in range(0, len(val_real), 64):
                r, f = views(range(b, min(b + 64, len(val_real))), 0, train=False)
                ps.append(torch.sigmoid(model(to_tensor(r + f, config.mean, config.std).to(device))[0]).float().cpu().numpy())
                ys.append(np.r_[np.zeros(len(r)), np.ones(len(f))])
        auc = roc_auc(np.concatenate(ys), np.concatenate(ps))
        history.append({"epoch": epoch + 1, "train_loss": round(loss_sum / steps_per_epoch, 5), "val_auc": round(auc, 5),
                        "seconds": round(time.time() - t0, 1)})
        log(f"synthesis epoch {epoch + 1}/{epochs}: loss {loss_sum / steps_per_epoch:.4f} val AUC {auc:.4f} ({time.time() - t0:.0f} s)")
        epoch += 1
        if time_budget_s and epoch == 1:
            fits = max(1, int(time_budget_s // max(time.time() - t0, 1e-3)))
            if fits < epochs:
                log(f"time budget {time_budget_s:.0f} s: {fits} epochs instead of {epochs}")
                epochs = fits
                total = steps_per_epoch * epochs
    pool.shutdown()
    model.to("cpu").eval()
    expert.device = "cpu"
    expert.config = config
    return expert, history


def train_synthesis(train_crops: Sequence[str], val_crops: Sequence[str], out: str | Path, device: str = "cpu",
                    init_weights: str | Path | None = None, ae_steps: int = 600, epochs: int = 10,
                    time_budget_s: float | None = None, seed: int = 0, face_size: int = 256, log=print) -> dict[str, Any]:
    """Autoencoders, then the classifier; writes OUT/synthesis_efficientnet_lite0.safetensors + .json."""
    t0 = time.time()
    tr = face_arrays(train_crops, face_size)
    va = face_arrays(val_crops, face_size)
    tr_t = torch.from_numpy(tr).permute(0, 3, 1, 2).contiguous()
    va_t = torch.from_numpy(va).permute(0, 3, 1, 2).contiguous()
    models = train_autoencoders(tr_t, device, steps=ae_steps, seed=seed, log=log)
    t_ae = time.time() - t0
    fk = reconstruct(models, tr_t, device).permute(0, 2, 3, 1).contiguous().numpy()
    vfk = reconstruct(models, va_t, device).permute(0, 2, 3, 1).contiguous().numpy()
    budget = None if time_budget_s is None else max(30.0, time_budget_s - (time.time() - t0))
    expert, history = train_classifier(tr, fk, va, vfk, device, init_weights, epochs=epochs, seed=seed,
                                       time_budget_s=budget, log=log)
    record = {
        "recipe": "real faces vs their reconstructions by autoencoders trained here (no generated images)",
        "upsamplers": list(UPSAMPLERS), "ae_steps": ae_steps, "ae_seconds": round(t_ae, 1), "face_size": face_size,
        "train_images": len(tr), "val_images": len(va), "epochs": len(history), "seed": seed,
        "val_auc": history[-1]["val_auc"] if history else None, "history": history,
        "train_seconds": round(time.time() - t0, 1), "device": device,
    }
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    expert.save(out / "synthesis_efficientnet_lite0.safetensors", training=record, dtype=torch.float16)
    return record


def main(argv: Sequence[str] | None = None) -> int:
    import argparse
    import json

    ap = argparse.ArgumentParser(description="train the synthesis expert on autoencoder pseudo-fakes of cached real faces")
    ap.add_argument("--crops", type=Path, required=True, help="JSON {'train': [png, ...], 'val': [png, ...]} of cached crops")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--init-weights", default=None)
    ap.add_argument("--ae-steps", type=int, default=600)
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--time-budget-s", type=float, default=None)
    args = ap.parse_args(argv)
    crops = json.loads(args.crops.read_text())
    rec = train_synthesis(crops["train"], crops["val"], args.out, args.device, args.init_weights, args.ae_steps,
                          args.epochs, args.time_budget_s, log=lambda m: print(m, file=sys.stderr, flush=True))
    print(json.dumps({k: v for k, v in rec.items() if k != "history"}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
