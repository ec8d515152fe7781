import math

import pytest
import torch

from pyro_vae.hmc import HMCStep, find_step_size, hmc_transition, potential_and_grad

F64 = torch.float64

pytestmark = pytest.mark.usefixtures("one_thread")


def gaussian(mean, cov):
    """Potential energy of N(mean, cov) per chain: positions (..., P) -> (...)."""
    precision = torch.linalg.inv(cov)

    def potential(x):
        d = x - mean
        return 0.5 * ((d @ precision) * d).sum(-1)

    return potential, precision


def test_potential_and_grad_per_chain():
    mean = torch.tensor([1.0, -2.0, 0.5], dtype=F64)
    cov = torch.tensor([[1.0, 0.3, 0.0], [0.3, 2.0, -0.4], [0.0, -0.4, 0.5]], dtype=F64)
    potential, precision = gaussian(mean, cov)
    x = torch.randn(4, 6, 3, dtype=F64)
    energy, grad = potential_and_grad(potential, x)
    assert energy.shape == (4, 6) and grad.shape == (4, 6, 3)
    assert torch.allclose(energy, potential(x), rtol=1e-12)
    assert torch.allclose(grad, (x - mean) @ precision, rtol=1e-12)  # each chain's own gradient
    assert not x.requires_grad


def test_transition_converges_to_and_keeps_a_gaussian_target():
    """Chains started far off at one point end with the target's mean and covariance (which a
    kernel with a wrong gradient, a missing or wrong Metropolis correction, or one that does not
    move, would not give), and the acceptance rate is neither 0 nor 1."""
    torch.manual_seed(0)
    mean = torch.tensor([1.0, -2.0, 0.5], dtype=F64)
    cov = torch.tensor([[1.0, 0.6, 0.0], [0.6, 4.0, -0.5], [0.0, -0.5, 0.25]], dtype=F64)
    potential, _ = gaussian(mean, cov)
    x = torch.full((4000, 3), 5.0, dtype=F64)
    energy = grad = None
    accept = []
    for _ in range(150):
        step_size = 0.4 * (0.8 + 0.4 * torch.rand(4000, 1, dtype=F64))  # random lengths: no resonance
        step = hmc_transition(x, potential, step_size, 5, energy=energy, grad=grad)
        assert isinstance(step, HMCStep)
        x, energy, grad = step.position, step.energy, step.grad
        accept.append(float(step.accept_prob.mean()))
    se = cov.diagonal().sqrt() / math.sqrt(4000)
    assert ((x.mean(0) - mean).abs() < 5 * se).all()
    emp = torch.cov(x.T)
    assert torch.allclose(emp, cov, atol=0.12 * float(cov.diagonal().max()))
    assert ((emp.diagonal() / cov.diagonal() - 1).abs() < 0.1).all()
    assert 0.3 < sum(accept[50:]) / 100 < 0.99
    # the energy and gradient carried along are those of the final positions
    e, g = potential_and_grad(potential, x)
    assert torch.allclose(energy, e, rtol=1e-12) and torch.allclose(grad, g, rtol=1e-12)


def test_one_transition_matches_a_hand_computed_leapfrog():
    """Two leapfrog steps on N(0, 1) written out by hand, with the momentum and the uniform
    draw the kernel takes from the same seed."""
    x = torch.linspace(-2, 2, 9, dtype=F64).unsqueeze(-1)
    eps = torch.linspace(1.0, 1.99, 9, dtype=F64).unsqueeze(-1)
    torch.manual_seed(5)
    step = hmc_transition(x, lambda z: 0.5 * z.square().sum(-1), eps, 2)
    torch.manual_seed(5)
    r = torch.randn_like(x)
    u = torch.rand(9, dtype=F64)
    z, p = x.clone(), r.clone()
    for _ in range(2):
        p = p - 0.5 * eps * z
        z = z + eps * p
        p = p - 0.5 * eps * z
    h0 = 0.5 * (x.square() + r.square()).squeeze(-1)
    h1 = 0.5 * (z.square() + p.square()).squeeze(-1)
    prob = torch.exp(h0 - h1).clamp(max=1.0)
    assert torch.allclose(step.accept_prob, prob, rtol=1e-12)
    assert torch.equal(step.accepted, u < prob)
    assert torch.allclose(step.position, torch.where(step.accepted.unsqueeze(-1), z, x), rtol=1e-12)
    assert 0 < int(step.accepted.sum()) < 9


def test_too_large_step_is_rejected():
    torch.manual_seed(1)
    potential, _ = gaussian(torch.zeros(2, dtype=F64), torch.eye(2, dtype=F64))
    x = torch.randn(500, 2, dtype=F64)
    step = hmc_transition(x, potential, 50.0, 3)
    # wildly unstable integration: (almost) nothing is accepted and rejected chains stay put
    assert float(step.accept_prob.mean()) < 0.01
    assert torch.equal(step.position[~step.accepted], x[~step.accepted])
    assert torch.equal(step.energy[~step.accepted], potential(x)[~step.accepted])


def test_nonfinite_energy_is_rejected():
    """A trajectory into a region of infinite or NaN energy never moves the chain."""
    def potential(x):
        e = 0.5 * x.square().sum(-1)
        return torch.where(x[..., 0] > 1.0, torch.full_like(e, math.nan), e)

    torch.manual_seed(2)
    x = torch.full((200, 2), 0.5, dtype=F64)
    x[:, 1] = torch.linspace(-1, 1, 200, dtype=F64)
    moves = torch.zeros(200, dtype=torch.bool)
    for _ in range(20):
        step = hmc_transition(x, potential, 1.5, 4)
        bad = step.position[:, 0] > 1.0
        assert not bad.any()
        assert (step.accept_prob[~step.accepted] < 1).all()
        assert torch.isfinite(step.energy).all()
        moves |= step.accepted
        x = step.position
    assert moves.any()  # it did move where the energy is finite


def test_step_size_heuristic_is_scale_equivariant():
    """Leapfrog on N(0, s^2 I) with step s*eps is leapfrog on N(0, I) with step eps: with the
    same momenta the heuristic's answer scales exactly by s (a power of two: exact in floats)."""
    y = torch.randn(64, 5, 3, dtype=F64)
    answers = {}
    for s in (1.0, 0.25, 8.0):
        torch.manual_seed(3)
        start = torch.full((1, 5, 1), 0.1 * s, dtype=F64)
        answers[s] = find_step_size(s * y, lambda x, s=s: 0.5 * x.square().sum(-1) / s ** 2, start,
                                    chain_dims=(0,))
        assert answers[s].shape == (1, 5, 1)
    assert torch.allclose(answers[0.25], 0.25 * answers[1.0], rtol=1e-12)
    assert torch.allclose(answers[8.0], 8.0 * answers[1.0], rtol=1e-12)
    # one leapfrog step on a 3-d standard normal is accepted with probability 0.8 for a step near 1
    assert ((answers[1.0] > 0.3) & (answers[1.0] < 4.0)).all()


def test_step_size_heuristic_moves_a_bad_start_both_ways():
    torch.manual_seed(4)
    x = torch.randn(32, 2, 3, dtype=F64)
    potential = lambda x: 0.5 * x.square().sum(-1)  # noqa: E731
    small = find_step_size(x, potential, torch.full((1, 2, 1), 1e-4, dtype=F64), chain_dims=(0,))
    large = find_step_size(x, potential, torch.full((1, 2, 1), 1e3, dtype=F64), chain_dims=(0,))
    for found in (small, large):
        assert ((found > 0.2) & (found < 5.0)).all()


def test_step_size_heuristic_counts_only_weighted_chains():
    """Chains of weight 0 do not change the answer, however stiff their target."""
    y = torch.randn(2, 4, 3, dtype=F64)
    stiffness = torch.tensor([1.0, 1e6], dtype=F64).reshape(2, 1)
    answers = {}
    for name, scale, weights in (("plain", torch.ones(2, 1, dtype=F64), torch.tensor([[1.0], [0.0]])),
                                 ("stiff, masked", stiffness, torch.tensor([[1.0], [0.0]])),
                                 ("stiff, counted", stiffness, None)):
        torch.manual_seed(6)
        answers[name] = find_step_size(y, lambda x, s=scale: 0.5 * s * x.square().sum(-1),
                                       torch.full((1, 4, 1), 0.1, dtype=F64), chain_dims=(0,),
                                       weights=None if weights is None else weights.to(F64))
    assert torch.equal(answers["plain"], answers["stiff, masked"])
    assert (answers["stiff, counted"] < answers["plain"] / 10).all()
