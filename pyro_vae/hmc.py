"""Hamiltonian Monte Carlo transitions for many independent chains at once.

A *position* is a tensor ``(..., P)``: every index of the leading (batch) dimensions is one
chain in an unconstrained space of size P. The potential energy ``potential_fn(position)`` is
computed per chain, shape ``(...)``; chains do not interact, so the gradient of the summed
energy is each chain's own gradient. One call of :func:`hmc_transition` moves every chain by
one HMC step with an identity mass matrix: a fresh Gaussian momentum, ``num_leapfrog_steps``
steps of Pyro's leapfrog integrator (:func:`pyro.ops.integrator.velocity_verlet`) and a
Metropolis-Hastings correction per chain. The step size may differ between chains (a tensor
broadcastable to the position), which lets annealed importance sampling adapt one step size per
datapoint. :func:`find_step_size` is the usual start-up heuristic (Hoffman & Gelman 2014,
Algorithm 4), vectorized: double or halve each group's step size until the acceptance
probability of one leapfrog step crosses a threshold.

A trajectory that leaves the region where the energy is finite (NaN or infinite energy or
position) is rejected; the chain stays where it was.
"""

from typing import NamedTuple

import torch

from pyro.ops.integrator import potential_grad, velocity_verlet

__all__ = ["HMCStep", "potential_and_grad", "hmc_transition", "find_step_size"]

_KEY = "position"


class HMCStep(NamedTuple):
    """The outcome of :func:`hmc_transition` for every chain.

    :ivar torch.Tensor position: the new positions, shape ``(..., P)``.
    :ivar torch.Tensor energy: potential energy at the new positions, shape ``(...)``.
    :ivar torch.Tensor grad: its gradient, shape ``(..., P)``.
    :ivar torch.Tensor accept_prob: the Metropolis-Hastings acceptance probability
        ``min(1, exp(H_start - H_end))`` of each chain's proposal, shape ``(...)``; 0 for a
        trajectory with a non-finite energy.
    :ivar torch.Tensor accepted: bool, whether each chain moved, shape ``(...)``.
    """

    position: torch.Tensor
    energy: torch.Tensor
    grad: torch.Tensor
    accept_prob: torch.Tensor
    accepted: torch.Tensor


class _Summed:
    """``potential_fn`` summed over chains (the scalar Pyro's integrator differentiates), keeping
    the per-chain energies of the last call."""

    def __init__(self, potential_fn):
        self.potential_fn = potential_fn
        self.last = None

    def __call__(self, z):
        with torch.enable_grad():
            energy = self.potential_fn(z[_KEY])
            self.last = energy.detach()
            return energy.sum()


def potential_and_grad(potential_fn, position):
    """Per-chain potential energy and its gradient.

    :param callable potential_fn: ``(..., P) -> (...)``, differentiable.
    :param torch.Tensor position: shape ``(..., P)``.
    :returns: ``(energy, grad)`` of shapes ``(...)`` and ``(..., P)``.
    """
    summed = _Summed(potential_fn)
    grads, _ = potential_grad(summed, {_KEY: position.detach().clone()})
    return summed.last, grads[_KEY]


def _kinetic_grad(momentum):
    return momentum  # identity mass matrix: K(r) = |r|^2 / 2


def _leapfrog(position, momentum, summed, step_size, num_leapfrog_steps, grad):
    z, r, grads, _ = velocity_verlet({_KEY: position}, {_KEY: momentum}, summed, _kinetic_grad,
                                     step_size, num_leapfrog_steps, z_grads={_KEY: grad})
    return z[_KEY], r[_KEY], grads[_KEY], summed.last


def _log_accept(energy, momentum, new_position, new_energy, new_momentum):
    h_start = energy + 0.5 * momentum.square().sum(-1)
    h_end = new_energy + 0.5 * new_momentum.square().sum(-1)
    log_accept = (h_start - h_end).clamp(max=0.0)
    finite = torch.isfinite(h_end) & torch.isfinite(new_position).all(-1)
    return torch.where(finite, log_accept, torch.full_like(log_accept, -torch.inf))


def hmc_transition(position, potential_fn, step_size, num_leapfrog_steps, *, energy=None,
                   grad=None):
    """One HMC step of every chain, leaving ``exp(-potential_fn)`` invariant for each.

    :param torch.Tensor position: current positions, shape ``(..., P)``.
    :param callable potential_fn: per-chain potential energy ``(..., P) -> (...)`` (the negative
        log-density up to a constant), differentiable by autograd.
    :param step_size: leapfrog step size: a positive float, or a tensor broadcastable to
        ``position`` (e.g. ``(..., 1)``, one per chain or per group of chains).
    :param int num_leapfrog_steps: leapfrog steps per trajectory.
    :param torch.Tensor energy: ``potential_fn(position)`` if already known, shape ``(...)``.
    :param torch.Tensor grad: its gradient if already known, shape ``(..., P)``; with ``energy``
        it saves one evaluation.
    :returns: :class:`HMCStep`.
    """
    if energy is None or grad is None:
        energy, grad = potential_and_grad(potential_fn, position)
    summed = _Summed(potential_fn)
    momentum = torch.randn_like(position)
    new_position, new_momentum, new_grad, new_energy = _leapfrog(
        position, momentum, summed, step_size, num_leapfrog_steps, grad)
    log_accept = _log_accept(energy, momentum, new_position, new_energy, new_momentum)
    accepted = torch.rand_like(log_accept).log() < log_accept
    keep = accepted.unsqueeze(-1)
    return HMCStep(
        position=torch.where(keep, new_position, position),
        energy=torch.where(accepted, new_energy, energy),
        grad=torch.where(keep, new_grad, grad),
        accept_prob=log_accept.exp(),
        accepted=accepted,
    )


def find_step_size(position, potential_fn, step_size, *, energy=None, grad=None, chain_dims=(),
                   weights=None, threshold=0.8, max_doublings=20):
    """A reasonable initial step size for each group of chains (Hoffman & Gelman 2014, Alg. 4;
    the threshold 0.8 of Pyro's HMC, which errs on the small side).

    From ``step_size``, each group's step size is doubled while the acceptance probability of
    one leapfrog step stays above ``threshold``, or halved while it stays below, until it
    crosses (at most ``max_doublings`` times). The acceptance probability of a group is the mean
    over its chains, the dims ``chain_dims`` of the batch. The chains do not move.

    :param torch.Tensor position: shape ``(..., P)``.
    :param callable potential_fn: as for :func:`hmc_transition`.
    :param torch.Tensor step_size: starting step sizes, positive, with the shape of the batch
        reduced over ``chain_dims`` (kept as size 1) and a trailing 1: e.g. ``(1, N, 1)`` for
        positions ``(C, N, P)`` with ``chain_dims=(0,)``.
    :param torch.Tensor energy: ``potential_fn(position)`` if already known.
    :param torch.Tensor grad: its gradient if already known.
    :param tuple chain_dims: batch dims averaged over within a group.
    :param torch.Tensor weights: optional non-negative weights of the chains in that average,
        broadcastable to the batch (e.g. ``(C, 1)``: 0 for chains that must not count).
    :param float threshold: the acceptance probability to cross.
    :param int max_doublings: most doublings or halvings.
    :returns: tensor with the shape of ``step_size``.
    """
    if energy is None or grad is None:
        energy, grad = potential_and_grad(potential_fn, position)
    summed = _Summed(potential_fn)

    def accept_prob(eps):
        momentum = torch.randn_like(position)
        z, r, _, e = _leapfrog(position, momentum, summed, eps, 1, grad)
        prob = _log_accept(energy, momentum, z, e, r).exp()
        w = torch.ones_like(prob) if weights is None else weights.expand_as(prob)
        if chain_dims:
            dims = tuple(chain_dims)
            prob = (w * prob).sum(dims, keepdim=True) / w.sum(dims, keepdim=True)
        return prob.unsqueeze(-1)

    step_size = step_size.clone()
    grow = accept_prob(step_size) > threshold
    active = torch.ones_like(grow)
    for _ in range(max_doublings):
        if not bool(active.any()):
            break
        trial = torch.where(active, torch.where(grow, 2.0 * step_size, 0.5 * step_size), step_size)
        above = accept_prob(trial) > threshold
        crossed = active & (above != grow)
        # growing: keep the last step size still above the threshold; shrinking: the first above
        step_size = torch.where(active & ~(crossed & grow), trial, step_size)
        active = active & ~crossed
    return step_size
