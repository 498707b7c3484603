"""train/fused_lora.py: a LoRA layer's forward and backward as one function, the same numbers as PEFT's."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
peft = pytest.importorskip("peft")

from tunesmith.train import fused_lora  # noqa: E402


class Net(torch.nn.Module):
    def __init__(self, bias: bool):
        super().__init__()
        self.fc = torch.nn.Linear(24, 40, bias=bias)

    def forward(self, x):
        return self.fc(x)


def lora_net(bias=True, dropout=0.0, dora=False):
    torch.manual_seed(0)
    cfg = peft.LoraConfig(r=4, lora_alpha=7, lora_dropout=dropout, use_dora=dora, target_modules=["fc"])
    model = peft.get_peft_model(Net(bias), cfg)
    with torch.no_grad():  # B starts at zero; a trained adapter's is not
        model.base_model.model.fc.lora_B["default"].weight.normal_()
    return model


def grads(model, x, g, dtype):
    """Output and the gradients of the input, A and B; the frozen base held in `dtype` (bf16 under
    autocast, as train/setup.py holds it)."""
    fc = model.base_model.model.fc
    fc.base_layer.to(dtype)
    x = x.to(dtype).requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
        out = model(x)
    (out.float() * g).sum().backward()
    a, b = fc.lora_A["default"].weight, fc.lora_B["default"].weight
    res = [out.float(), x.grad.float(), a.grad.clone(), b.grad.clone()]
    a.grad = b.grad = None
    return res


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("bias", [True, False])
def test_fused_lora_matches_peft(dtype, bias, monkeypatch):
    x, g = torch.randn(2, 9, 24), torch.randn(2, 9, 40)
    want = grads(lora_net(bias), x, g, dtype)
    model = lora_net(bias)
    assert fused_lora.apply(model) == 1
    calls, fn = [], fused_lora._function()
    real = fn.apply
    monkeypatch.setattr(fn, "apply", lambda *a: calls.append(1) or real(*a))
    got = grads(model, x, g, dtype)
    assert calls == [1]
    tol = 1e-5 if dtype == torch.float32 else 0.02
    for mine, ref in zip(got, want):
        assert mine.dtype == ref.dtype and mine.shape == ref.shape
        assert (mine - ref).abs().max() <= tol * ref.abs().max(), (mine - ref).abs().max()
    assert got[2].abs().sum() > 0  # A learns: B is not zero


@pytest.mark.parametrize("case", ["dropout", "dora", "disabled", "no grad"])
def test_fused_lora_leaves_the_rest_to_peft(case, monkeypatch):
    model = lora_net(dropout=0.1 if case == "dropout" else 0.0, dora=case == "dora")
    fused_lora.apply(model)
    calls = []
    fn = fused_lora._function()
    monkeypatch.setattr(fn, "apply", lambda *a: calls.append(1))
    x = torch.randn(3, 24)
    if case == "disabled":
        with model.disable_adapter():
            out = model(x)
    elif case == "no grad":
        with torch.no_grad():
            out = model(x)
    else:
        out = model(x)
    assert calls == [] and out.shape == (3, 40)
