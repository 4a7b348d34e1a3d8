import sys, math, torch, numpy as np, torch.nn.functional as F
sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[2]))
import checkpoint, data as datalib, model as M
torch.manual_seed(0)
ck = checkpoint.load(sys.argv[1], fallback=False)
net = M.Transformer(M.ModelArgs(**ck["model_args"]))
if len(sys.argv) < 3: net.load_state_dict(ck["model"])
dmeta = datalib.load_meta("data/enwiki8k"); tr, va = datalib.load_bins("data/enwiki8k", dmeta)
rng = np.random.default_rng(0); ix = rng.integers(0, len(tr) - 130, 16)
x = torch.stack([torch.from_numpy(tr[i:i+128].astype(np.int64)) for i in ix]); y = torch.stack([torch.from_numpy(tr[i+1:i+129].astype(np.int64)) for i in ix])
sys.path.insert(0, str(__import__('pathlib').Path(__file__).parent))
from run_patched import patch  # the attention variants
def grads(mode, bf16):
    patch(mode); net.zero_grad()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        _, loss = net(x, y)
    loss.backward()
    return loss.item(), {n: p.grad.detach().clone() for n, p in net.named_parameters()}
l0, g0 = grads("fused", False)
print(f"ref fp32 fused loss {l0:.5f}")
for mode, bf16 in [("explicit", False), ("fused", True), ("explicit", True), ("explicit32", True)]:
    l, g = grads(mode, bf16)
    num = sum((g[n] - g0[n]).pow(2).sum() for n in g0).sqrt(); den = sum(g0[n].pow(2).sum() for n in g0).sqrt()
    cos = {n: F.cosine_similarity(g[n].flatten(), g0[n].flatten(), 0).item() for n in g0}
    worst = sorted(cos.items(), key=lambda kv: kv[1])[:3]
    groups = {}
    for n in g0:
        key = n.split(".")[-2] if n.startswith("layers") else n
        groups.setdefault(key, []).append(((g[n]-g0[n]).norm() / g0[n].norm()).item())
    print(f"{mode:10s} bf16={bf16!s:5s} loss {l:.5f} rel.err {num/den:.4f} worst cos {[(n, round(c,4)) for n,c in worst]}")
    print("   rel err by tensor kind:", {k: round(float(np.mean(v)), 4) for k, v in groups.items()})
