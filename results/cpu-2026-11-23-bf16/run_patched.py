import sys, math, torch, torch.nn.functional as F
sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[2]))
import model as M
ORIG = M.Attention.forward


def patch(mode):
    """Replace the decoder's attention with MODE: fused (the model's own), explicit (scores and
    softmax under autocast, probabilities cast back to q's dtype) or explicit32 (autocast off
    inside attention)."""
    def fwd(self, x, cos, sin, explicit=False):
        if mode == "fused": return ORIG(self, x, cos, sin, explicit)
        B, T, _ = x.shape; hd = self.head_dim
        q = self.q(x).view(B, T, self.n_head, hd).transpose(1, 2)
        k = self.k(x).view(B, T, self.n_kv_head, hd).transpose(1, 2)
        v = self.v(x).view(B, T, self.n_kv_head, hd).transpose(1, 2)
        q, k = M.apply_rope(q, cos, sin), M.apply_rope(k, cos, sin)
        rep = self.n_head // self.n_kv_head
        k = k.repeat_interleave(rep, dim=1); v = v.repeat_interleave(rep, dim=1)
        causal = torch.ones(T, T, dtype=torch.bool).tril()
        if mode == "explicit32":
            with torch.autocast("cpu", enabled=False):
                q, k, v = q.float(), k.float(), v.float()
                att = (q @ k.transpose(-2, -1)) / math.sqrt(hd)
                yy = F.softmax(att.masked_fill(~causal, float("-inf")), -1) @ v
        else:
            att = (q @ k.transpose(-2, -1)) / math.sqrt(hd)
            yy = F.softmax(att.masked_fill(~causal, float("-inf")).float(), -1).type_as(q) @ v
        yy = yy.transpose(1, 2).contiguous().view(B, T, self.n_head * hd)
        return self.o(yy), None
    M.Attention.forward = fwd


if __name__ == "__main__":
    patch(sys.argv[1])
    import train
    train.main(sys.argv[2:])
