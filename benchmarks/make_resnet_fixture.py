"""Record torchvision resnet18 outputs for tests/test_resnet.py (no torchvision at test time).

Run once in a venv with torchvision (see tests/test_resnet.py for the command):
    PYTHONPATH=src /tmp/tvvenv/bin/python benchmarks/make_resnet_fixture.py

Weights come from tests/_resnet_recipe.py (deterministic from key + shape), so the
fixture stores only the key/shape list, the input, and torchvision's outputs.
"""

import importlib.util
import json
import sys
from pathlib import Path

import torch
import torchvision
from safetensors.torch import save_file

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "tests" / "fixtures" / "resnet18_tv_fixture.safetensors"
INPUT_SEED, SHAPE = 1234, (2, 3, 64, 64)


def load_module(name, path):
    # By path: rl2/__init__ may grow imports this venv lacks.
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


ours_mod = load_module("rl2_resnet", ROOT / "src" / "rl2" / "backbones" / "resnet.py")
recipe = load_module("resnet_recipe", ROOT / "tests" / "_resnet_recipe.py")

torch.manual_seed(0)
tv = torchvision.models.resnet18(weights=None).eval()
sd_shapes = [(k, list(v.shape)) for k, v in tv.state_dict().items()]
tv.load_state_dict(recipe.recipe_state_dict(sd_shapes), strict=True)

ours = ours_mod.resnet18().eval()
ours.load_state_dict(tv.state_dict(), strict=True)

x = torch.randn(SHAPE, generator=torch.Generator().manual_seed(INPUT_SEED))
body = torch.nn.Sequential(*list(tv.children())[:-2])  # up to layer4
with torch.no_grad():
    tv_logits, tv_layer4 = tv(x), body(x)
    tv_gap = torch.flatten(tv.avgpool(tv_layer4), 1)
    diffs = {
        "logits": (ours(x) - tv_logits).abs().max().item(),
        "gap": (ours.forward_features(x, "gap") - tv_gap).abs().max().item(),
        "layer4": (ours.layer4_map(x) - tv_layer4).abs().max().item(),
    }
print("torch", torch.__version__, "torchvision", torchvision.__version__)
print("max abs diff ours vs torchvision:", diffs)
print("logit abs max", tv_logits.abs().max().item(), "gap abs max", tv_gap.abs().max().item())
assert all(d < 1e-5 for d in diffs.values()), diffs

# Same seed, same torch: our init order must reproduce torchvision's random weights.
torch.manual_seed(7)
tv_rand = torchvision.models.resnet18(weights=None).state_dict()
ours_rand = ours_mod.random_resnet18(7).state_dict()
init_same = all(torch.equal(tv_rand[k], ours_rand[k]) for k in tv_rand)
print("random_resnet18(7) == torchvision init under manual_seed(7):", init_same)
assert init_same

meta = {
    "keys": json.dumps(sd_shapes),
    "input_seed": str(INPUT_SEED),
    "torch": torch.__version__,
    "torchvision": torchvision.__version__,
}
tensors = {"input": x, "tv_logits": tv_logits, "tv_gap": tv_gap, "tv_layer4": tv_layer4}
OUT.parent.mkdir(parents=True, exist_ok=True)
save_file({k: v.contiguous() for k, v in tensors.items()}, str(OUT), metadata=meta)
print("wrote", OUT.relative_to(ROOT), OUT.stat().st_size, "bytes")
