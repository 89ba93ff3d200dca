"""ModuleList and ModuleDict (with Identity and Flatten, the other structural layers): registration,
PyTorch's state_dict keys, the list/dict protocols, training through them, bad input."""
from __future__ import annotations

import numpy as np
import pytest

import gpunn as gn
from gpunn import nn


@pytest.fixture
def torch():
    return pytest.importorskip("torch")


class Tower(nn.Module):
    def __init__(self):
        super().__init__()
        self.blocks = nn.ModuleList([nn.Linear(3, 4), nn.Linear(4, 4)])
        self.heads = nn.ModuleDict({"cls": nn.Linear(4, 2), "reg": nn.Linear(4, 1)})
        self.flat = nn.Flatten()
        self.skip = nn.Identity()

    def forward(self, x):
        x = self.skip(self.flat(x))
        for b in self.blocks:
            x = b(x).relu()
        return self.heads["cls"](x), self.heads["reg"](x)


def test_module_list_protocol():
    layers = nn.ModuleList([nn.Linear(2, 2), nn.ReLU()])
    layers.append(nn.Linear(2, 1))
    layers += [nn.Tanh()]
    layers.insert(0, nn.Identity())
    assert len(layers) == 5 and [type(m).__name__ for m in layers] == ["Identity", "Linear", "ReLU", "Linear", "Tanh"]
    assert isinstance(layers[1:3], nn.ModuleList) and len(layers[1:3]) == 2
    assert layers[-1] is layers[4]
    popped = layers.pop(0)
    assert isinstance(popped, nn.Identity) and list(layers.state_dict()) == ["0.weight", "0.bias", "2.weight", "2.bias"]
    del layers[0]
    assert list(layers.state_dict()) == ["1.weight", "1.bias"]
    with pytest.raises(TypeError, match="ModuleList: entry 3 is a int, not a Module"):
        layers.append(3)
    with pytest.raises(IndexError, match="out of range for a ModuleList of 3 modules"):
        layers[3]
    with pytest.raises(NotImplementedError):
        layers(gn.ones(1, 2))


def test_module_dict_protocol():
    d = nn.ModuleDict([("a", nn.Linear(2, 2))])
    d["b"] = nn.ReLU()
    d.update({"c": nn.Linear(2, 1)})
    assert list(d) == ["a", "b", "c"] and list(d.keys()) == ["a", "b", "c"] and "b" in d and len(d) == 3
    assert [type(m).__name__ for m in d.values()] == ["Linear", "ReLU", "Linear"]
    assert isinstance(d.pop("b"), nn.ReLU) and "b" not in d
    assert list(d.state_dict()) == ["a.weight", "a.bias", "c.weight", "c.bias"]
    with pytest.raises(KeyError, match=r"no module 'z'; keys: \['a', 'c'\]"):
        d["z"]
    with pytest.raises(TypeError, match="not a Module"):
        d["x"] = 1
    with pytest.raises(TypeError, match="keys must be strings"):
        d[1] = nn.ReLU()
    with pytest.raises(KeyError, match="name of a ModuleDict attribute"):
        d["keys"] = nn.ReLU()
    d.clear()
    assert len(d) == 0 and not list(d.parameters())


def test_containers_register_parameters_and_train():
    gn.manual_seed(0)
    model = Tower()
    names = [n for n, _ in model.named_parameters()]
    assert names == ["blocks.0.weight", "blocks.0.bias", "blocks.1.weight", "blocks.1.bias",
                     "heads.cls.weight", "heads.cls.bias", "heads.reg.weight", "heads.reg.bias"]
    opt = gn.optim.SGD(model.parameters(), lr=0.1)
    x = gn.randn(8, 1, 3)
    y = gn.tensor([0, 1] * 4)
    losses = []
    for _ in range(20):
        logits, _ = model(x)
        loss = gn.nn.CrossEntropyLoss()(logits, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]


def test_state_dict_keys_and_outputs_match_torch(torch):
    tnn = torch.nn

    class TTower(tnn.Module):
        def __init__(self):
            super().__init__()
            self.blocks = tnn.ModuleList([tnn.Linear(3, 4), tnn.Linear(4, 4)])
            self.heads = tnn.ModuleDict({"cls": tnn.Linear(4, 2), "reg": tnn.Linear(4, 1)})
            self.flat = tnn.Flatten()
            self.skip = tnn.Identity()

        def forward(self, x):
            x = self.skip(self.flat(x))
            for b in self.blocks:
                x = b(x).relu()
            return self.heads["cls"](x), self.heads["reg"](x)

    t = TTower()
    g = Tower()
    assert list(g.state_dict()) == list(t.state_dict())
    g.load_state_dict(t.state_dict())
    x = np.random.default_rng(1).standard_normal((5, 1, 3)).astype(np.float32)
    for a, b in zip(g(gn.tensor(x)), t(torch.tensor(x))):
        np.testing.assert_allclose(a.numpy(), b.detach().numpy(), rtol=1.3e-6, atol=1e-5)
