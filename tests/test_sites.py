import pytest
import torch
from torch import nn

from unweave import SiteError, capture, list_sites, patch
from unweave.sites import capturing


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.fc1 = nn.Linear(4, 8)
        self.act = nn.ReLU()
        self.fc2 = nn.Linear(8, 3)
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        return self.fc2(self.act(self.fc1(x)))


def test_capture_matches_manual_forward():
    net, x = Net(), torch.randn(5, 4)
    acts = capture(net, ["fc1", "act", "fc2:input", "fc2"], x)
    h = x @ net.fc1.weight.T + net.fc1.bias  # independent of the hooks
    torch.testing.assert_close(acts["fc1"], h)
    torch.testing.assert_close(acts["act"], h.clamp(min=0))
    torch.testing.assert_close(acts["fc2:input"], h.clamp(min=0))
    torch.testing.assert_close(acts["fc2"], h.clamp(min=0) @ net.fc2.weight.T + net.fc2.bias)
    assert not acts["fc1"].requires_grad


def test_stop_early_skips_later_modules():
    net, x = Net(), torch.randn(5, 4)
    ran = []
    net.fc2.register_forward_pre_hook(lambda *a: ran.append(True))
    acts = capture(net, ["fc1"], x, stop_early=True)
    assert acts["fc1"].shape == (5, 8) and not ran
    capture(net, ["fc1"], x)
    assert ran


def test_patch_tensor_function_and_broadcast():
    net, x = Net(), torch.randn(5, 4)
    zeros = torch.zeros(5, 8)
    with patch(net, {"act": zeros}):
        out = net(x)
    torch.testing.assert_close(out, net.fc2.bias.expand(5, 3))
    with patch(net, {"fc2:input": lambda a: 2 * a}):
        doubled = net(x)
    h = net.act(net.fc1(x))
    torch.testing.assert_close(doubled, 2 * h @ net.fc2.weight.T + net.fc2.bias)
    mean = h.mean(0)  # a (8,) vector broadcast over the batch: mean ablation
    with patch(net, {"act": mean}):
        torch.testing.assert_close(net(x), (mean @ net.fc2.weight.T + net.fc2.bias).expand(5, 3))
    torch.testing.assert_close(net(x), h @ net.fc2.weight.T + net.fc2.bias)  # patch gone


def test_hooks_removed_when_forward_raises():
    net = Net()
    with pytest.raises(RuntimeError):
        with patch(net, {"fc1": torch.zeros(5, 8)}), capturing(net, ["fc2"]):
            net(torch.randn(5, 3))  # wrong input width: the forward raises
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in net.modules())


def test_unknown_site_lists_closest():
    with pytest.raises(SiteError, match=r"unknown site 'fc3'.*closest valid sites: fc2, fc1"):
        capture(Net(), ["fc3"], torch.randn(1, 4))
    with pytest.raises(SiteError, match="':input' or ':output'"):
        capture(Net(), ["fc1:inptu"], torch.randn(1, 4))


def test_patch_shape_mismatch_names_both_shapes():
    net = Net()
    with pytest.raises(SiteError, match=r"expected shape \(5, 8\).*got \(5, 7\)"):
        with patch(net, {"fc1": torch.zeros(5, 7)}):
            net(torch.randn(5, 4))
    with pytest.raises(SiteError, match="returned int"):
        with patch(net, {"fc1": lambda a: 3}):
            net(torch.randn(5, 4))


class TupleOut(nn.Module):
    def forward(self, hidden_states, scale=1.0):
        return hidden_states * scale, "cache"


class KwargsNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.layer = TupleOut()

    def forward(self, x):
        return self.layer(hidden_states=x, scale=2.0)[0] + 1


def test_tuple_outputs_and_keyword_inputs():
    net, x = KwargsNet(), torch.randn(2, 3)
    acts = capture(net, ["layer", "layer:input"], x)
    torch.testing.assert_close(acts["layer:input"], x)
    torch.testing.assert_close(acts["layer"], 2 * x)
    with patch(net, {"layer:input": torch.ones(2, 3)}):
        torch.testing.assert_close(net(x), torch.full((2, 3), 3.0))
    with patch(net, {"layer": torch.zeros(2, 3)}):
        torch.testing.assert_close(net(x), torch.ones(2, 3))


def test_site_never_run_is_an_error():
    class Skips(nn.Module):
        def __init__(self):
            super().__init__()
            self.used, self.unused = nn.Identity(), nn.Identity()

        def forward(self, x):
            return self.used(x)

    with pytest.raises(SiteError, match="not run"):
        capture(Skips(), ["unused"], torch.zeros(1))


def test_list_sites():
    assert list_sites(Net()) == ["fc1", "fc1:input", "act", "act:input", "fc2", "fc2:input"]
