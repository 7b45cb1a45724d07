"""Our ResNet-18 against torchvision on the same state dict (random init, perturbed BatchNorm), once, in a venv with torchvision:
    PYTHONPATH=src /tmp/tvvenv/bin/python benchmarks/check_resnet_torchvision.py
Prints the largest absolute differences of logits, GAP features and the paper read-out; expect 0 or ~1e-6.
"""
import torch, torchvision, torch.nn.functional as F
from rl2.backbones.resnet import resnet18
torch.manual_seed(0)
tv = torchvision.models.resnet18(weights=None).eval()
# perturb BN stats so they matter
for m in tv.modules():
    if isinstance(m, torch.nn.BatchNorm2d):
        m.running_mean.uniform_(-0.5, 0.5); m.running_var.uniform_(0.5, 2.0)
        m.weight.data.uniform_(0.5, 1.5); m.bias.data.uniform_(-0.2, 0.2)
ours = resnet18().eval()
ours.load_state_dict(tv.state_dict(), strict=True)
x = torch.randn(4, 3, 224, 224)
with torch.no_grad():
    a = tv(x); b = ours(x)
    feat = torch.nn.Sequential(*list(tv.children())[:-2])(x)
    g = ours.forward_features(x, "gap"); gt = F.adaptive_avg_pool2d(feat, 1).flatten(1)
    x2 = torch.randn(2, 3, 256, 256)
    p = ours.forward_features(x2, "paper"); pt = F.avg_pool2d(torch.nn.Sequential(*list(tv.children())[:-2])(x2), 2).flatten(1)
print("keys equal:", list(tv.state_dict().keys()) == list(ours.state_dict().keys()))
print("logits max abs diff", (a-b).abs().max().item(), "scale", a.abs().max().item())
print("gap max abs diff", (g-gt).abs().max().item())
print("paper", p.shape, "max abs diff", (p-pt).abs().max().item())
