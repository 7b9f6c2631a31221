"""INR editing: equivariant outputs written back into the INR, loss on the rendered image."""

from __future__ import annotations

import pytest
import torch
from torch_geometric.data import Batch

import wsl
from wsl.data.generate.digits_inr import coordinate_grid, siren
from wsl.nn import GMN, state_dicts
from wsl.train import INREditing

pytest.importorskip("sklearn")


@pytest.fixture(scope="module")
def inrs(tmp_path_factory):
    from wsl.data.zoos import digits_inr

    data = digits_inr(limit=12, steps=150, root=tmp_path_factory.mktemp("zoo"), progress=False, normalize=True)
    return [data["train"][i] for i in range(8)]


def test_render_matches_the_written_back_network(inrs):
    task = INREditing()
    batch = Batch.from_data_list(inrs[:3])
    rendered = task.render(state_dicts(batch, batch.edge_attr[:, 0]))
    coords = coordinate_grid(28)
    for i, g in enumerate(inrs[:3]):
        net = wsl.from_graph(g, siren())
        torch.testing.assert_close(rendered[i], net(coords)[:, 0], rtol=1e-5, atol=1e-5)


def test_targets():
    task = INREditing(op="dilate", size=5)
    img = torch.zeros(1, 25)
    img[0, 12] = 1.0  # centre pixel
    want = torch.zeros(5, 5)
    want[1:4, 1:4] = 1
    assert torch.equal(task.target(img).view(5, 5), want)
    assert torch.equal(INREditing(op="erode", size=5).target(task.target(img)).view(5, 5)[2, 2], torch.tensor(1.0))
    assert torch.equal(INREditing(op="invert", size=5).target(img), 1 - img)
    with pytest.raises(ValueError, match="op must be"):
        INREditing(op="blur")


class Zero(torch.nn.Module):
    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, batch, output="graph"):
        out = self.inner(batch, output=output)
        return type(out)(out.graph * 0, out.node * 0, out.edge * 0)


def test_zero_edit_scores_the_baseline(inrs):
    task = INREditing()
    _loss, per, base = task.loss(Zero(GMN(out_dim=1, hidden_dim=8, num_layers=1)), Batch.from_data_list(inrs))
    torch.testing.assert_close(per, base)


def test_editing_learns(inrs):
    torch.manual_seed(0)
    task = INREditing()
    batch = Batch.from_data_list(inrs)
    model = GMN(out_dim=1, hidden_dim=16, num_layers=2)
    opt = torch.optim.Adam(model.parameters(), 3e-3)
    for _ in range(40):
        loss, _, base = task.loss(model, batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
    loss, _, base = task.loss(model, batch)
    assert float(loss) < 0.6 * float(base.mean()), (float(loss), float(base.mean()))
