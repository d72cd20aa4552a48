"""Meta-Curvature: the n-mode product form, and identity matrices reproduce MAML."""

from __future__ import annotations

import itertools

import pytest
import torch

from engine import kernels
from engine.learners.gradient import META_PREFIX
from engine.learners.metacurvature import MC_PREFIX, curvature_transform
from engine.learners.metasgd import LR_PREFIX
from test_learners import make, meta_gradient, tasks, to_double


def test_mode_products_equal_the_kronecker_matrix_vector_form() -> None:
    generator = torch.Generator().manual_seed(0)
    c_out, c_in, d = 3, 4, 5
    g = torch.randn(c_out, c_in, d, generator=generator, dtype=torch.float64)
    m_out, m_in, m_f = (torch.randn(n, n, generator=generator, dtype=torch.float64) for n in (c_out, c_in, d))
    kron = torch.kron(torch.kron(m_out, m_in), m_f)
    torch.testing.assert_close(curvature_transform(g, m_out, m_in, m_f).reshape(-1), kron @ g.reshape(-1))
    # mc1: M_o = I.
    kron_1 = torch.kron(torch.kron(torch.eye(c_out, dtype=torch.float64), m_in), m_f)
    torch.testing.assert_close(curvature_transform(g, None, m_in, m_f).reshape(-1), kron_1 @ g.reshape(-1))
    # Each mode alone (the other matrices identities) is the matrix product along that dimension.
    eye_in, eye_f = torch.eye(c_in, dtype=torch.float64), torch.eye(d, dtype=torch.float64)
    torch.testing.assert_close(curvature_transform(g, None, m_in, eye_f), torch.einsum("ij,ojf->oif", m_in, g))
    torch.testing.assert_close(curvature_transform(g, m_out, eye_in, eye_f), torch.einsum("ij,jof->iof", m_out, g))
    torch.testing.assert_close(curvature_transform(g, None, eye_in, m_f), torch.einsum("ij,ofj->ofi", m_f, g))


@pytest.mark.parametrize("name", ["mc1", "mc2"])
def test_identity_curvature_reproduces_maml_exactly(name: str) -> None:
    batch = tasks(2, dtype=torch.float64)
    maml = to_double(make("maml", inner_steps=2, inner_lr=0.3))
    mc = to_double(make(name, inner_steps=2, inner_lr=0.3))
    assert maml.meta_loss(batch).loss.item() == mc.meta_loss(batch).loss.item()
    maml_grads, mc_grads = meta_gradient(maml, batch), meta_gradient(mc, batch)
    for key in maml_grads:
        torch.testing.assert_close(mc_grads[key], maml_grads[key], rtol=1e-10, atol=1e-12)
    matrices = [k for k in mc.params if k.startswith(MC_PREFIX)]
    assert all(mc_grads[k].abs().sum() > 0 for k in matrices)  # the curvature is meta-learned
    assert any(k.endswith(".out") for k in matrices) == (name == "mc2")


def test_learned_curvature_changes_adaptation() -> None:
    learner = make("mc2")
    task = tasks(1, ways=3)[0]
    before = learner.adapt(task.support_x, task.support_y, 3).predict_proba(task.query_x)
    learner.params[MC_PREFIX + "conv2.weight.in"] = (2 * torch.eye(learner.backbone.channels)).requires_grad_(True)
    after = learner.adapt(task.support_x, task.support_y, 3).predict_proba(task.query_x)
    assert not torch.allclose(before, after)


@pytest.mark.parametrize(("name", "head_entry"), [("metasgd", LR_PREFIX + "head.weight"),
                                                   ("mc2", MC_PREFIX + "head.weight.in")])
def test_one_inner_step_from_the_zero_head_meta_learns_only_the_heads_entry(name: str, head_entry: str) -> None:
    """The first inner step from the zero head moves only the head, so with one step the backbone's
    learned rates or curvature matrices get no meta-gradient (models/RESULTS.md's note on the 1-step
    runs); from the second step on, every one does."""
    batch = tasks(2, dtype=torch.float64)
    for steps, fused in itertools.product((1, 2), (True, False)):  # the closed-form first step and plain autograd
        learner = to_double(make(name, inner_steps=steps, inner_lr=0.3))
        with kernels.fused(fused):
            grads = meta_gradient(learner, batch)
        meta = [k for k in learner.params if k.startswith(META_PREFIX) and k != head_entry]
        assert grads[head_entry].abs().max() > 1e-6
        # The head bias's first step is exactly zero too (balanced support), up to rounding (1e-34).
        moved = [k for k in meta if grads[k].abs().max() > 1e-12]
        assert moved == ([] if steps == 1 else meta), (steps, fused, moved)
