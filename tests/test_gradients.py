import math

import pytest
import torch
from torch import nn
from torch.distributions import constraints

import pyro
import pyro.distributions as dist

from pyro_vae import MixtureVAE, gradient_variance
from pyro_vae.gradients import GRADIENT_COLUMNS, gradient_moments
from pyro_vae.program_pair import BASELINE_STATE_PREFIX

F64 = torch.float64

# --------------------------------------------------------------------------- a tiny discrete model
# y_i ~ Cat(pi), x_i ~ N(mu_y, I), and a global w ~ N(0, I_8) that x does not depend on; the
# guide q(w) q(y_i | x_i) = N(m, 0.3^2 I) Cat(softmax(x_i A)). The ELBO is the explicit sum over
# y minus KL(q(w) || p(w)), so its gradient is exact. Trace_ELBO weights the score of y_i by the
# whole cost of its plate slice and of the global sites, log p(w) - log q(w) included;
# TraceGraph_ELBO by the terms that depend on y_i only.
X = torch.tensor([[1.0, 0.5], [-1.2, 0.3], [0.2, -1.5], [2.0, 1.0], [-0.4, -0.2]], dtype=F64)
PI = torch.tensor([0.5, 0.3, 0.2], dtype=F64)
MU = torch.tensor([[1.5, 0.0], [-1.0, 1.0], [0.0, -1.5]], dtype=F64)
A = torch.tensor([[0.6, -0.4, 0.1], [0.2, 0.5, -0.7]], dtype=F64)
M = torch.linspace(-1.0, 1.0, 8, dtype=F64)
SW = 0.3


def model(x):
    pi = pyro.param("pi", PI.clone(), constraint=constraints.simplex)
    mu = pyro.param("mu", MU.clone())
    pyro.sample("w", dist.Normal(torch.zeros(8, dtype=F64), 1.0).to_event(1))
    with pyro.plate("data", x.shape[0]):
        y = pyro.sample("y", dist.Categorical(pi))
        pyro.sample("x", dist.Normal(mu[y], 1.0).to_event(1), obs=x)


def make_guide(baseline=None, net=None):
    def guide(x):
        m = pyro.param("m", M.clone())
        a = pyro.param("a", A.clone())
        pyro.sample("w", dist.Normal(m, SW).to_event(1))
        infer = {"enumerate": "parallel"}
        if baseline == "decaying":
            infer["baseline"] = {"use_decaying_avg_baseline": True, "baseline_beta": 0.9}
        elif baseline == "neural":
            pyro.module("baseline", net)
            infer["baseline"] = {"nn_baseline": lambda inp: net(inp).squeeze(-1), "nn_baseline_input": x}
        with pyro.plate("data", x.shape[0]):
            pyro.sample("y", dist.Categorical(logits=x @ a), infer=infer)
    return guide


GROUPS = {"q_y": ["a"], "q_w": ["m"], "model": ["pi", "mu"]}


def exact_elbo_and_gradient():
    """The ELBO per datapoint as the explicit sum over y less the KL of w, and minus its
    gradient with respect to the unconstrained parameters, by group."""
    make_guide()(X)
    model(X)
    store = pyro.get_param_store()
    pi, mu, m, a = (store[n] for n in ("pi", "mu", "m", "a"))
    log_q_y = torch.log_softmax(X @ a, -1)                                          # (N, K)
    log_px = dist.Normal(mu, 1.0).log_prob(X[:, None, :]).sum(-1)                    # (N, K)
    kl_w = 0.5 * (SW ** 2 + m.square() - 1.0 - math.log(SW ** 2)).sum()
    elbo = ((log_q_y.exp() * (pi.log() + log_px - log_q_y)).sum() - kl_w) / X.shape[0]
    raw = dict(store.named_parameters())
    grads = {}
    for group, names in GROUPS.items():
        gs = torch.autograd.grad(-elbo, [raw[n] for n in names], retain_graph=True)
        grads[group] = torch.cat([g.reshape(-1) for g in gs])
    return float(elbo.detach()), grads


def test_enum_gives_the_explicit_sum_over_y_and_its_exact_gradient_every_draw():
    want_elbo, want = exact_elbo_and_gradient()
    m = gradient_moments(model, make_guide(), X, GROUPS, "enum", num_draws=3)
    for group in ("q_y", "model"):               # exact in y: no noise at all
        assert torch.allclose(m.mean[group], want[group], rtol=1e-10, atol=1e-12), group
        assert float(m.variance[group].max()) < 1e-24
    # w is sampled: its KL term is not summed but drawn (the ELBO itself is exact up to it)
    assert float(m.variance["q_w"].max()) > 1e-6
    assert m.elbo == pytest.approx(want_elbo, abs=0.5)


@pytest.mark.slow
def test_score_function_estimators_are_unbiased_and_tracegraph_has_the_lower_variance():
    """The means of the trace and tracegraph gradients over many draws equal the exact gradient
    within Monte Carlo error; tracegraph's Rao-Blackwellization (the cost of y_i without the
    terms of w) lowers the variance of q(y|x)'s gradient, a decaying average baseline further."""
    _, want = exact_elbo_and_gradient()
    n, particles = 150, 8                         # each draw averages 8 vectorized particles
    got = {}
    for label, objective, baseline in (("trace", "trace", None), ("tracegraph", "tracegraph", None),
                                       ("decaying", "tracegraph", "decaying")):
        got[label] = gradient_moments(model, make_guide(baseline), X, GROUPS, objective, num_draws=n,
                                      num_particles=particles, warmup=20, seed=1)
    for label, m in got.items():
        for group in GROUPS:
            se = (m.variance[group] / n).sqrt()
            z = ((m.mean[group] - want[group]).abs() / se).max()
            assert z < 4.5, (label, group, float(z))
    trace, graph, decaying = (got[k] for k in ("trace", "tracegraph", "decaying"))
    assert graph.total_variance("q_y") < 0.3 * trace.total_variance("q_y")
    assert decaying.total_variance("q_y") < 0.3 * graph.total_variance("q_y")
    # the other groups are differentiated through their densities, not through a score function:
    # the same draws (one seed) give the same gradients under both estimators
    for group in ("q_w", "model"):
        assert torch.allclose(trace.mean[group], graph.mean[group], atol=1e-12), group


def test_table_has_one_row_per_estimator_and_group_with_ratios_to_the_reference():
    estimators = {"trace": "trace", "tracegraph": "tracegraph",
                  "tracegraph_decaying": ("tracegraph", make_guide("decaying")), "enum": "enum"}
    df = gradient_variance(model, make_guide(), X, GROUPS, estimators, reference="trace", num_draws=20,
                           warmup=5, seed=0)
    assert list(df.columns) == GRADIENT_COLUMNS
    assert len(df) == 4 * 3 and set(df["estimator"]) == set(estimators)
    moments = df.attrs["moments"]
    for row in df.itertuples():
        m = moments[row.estimator]
        assert row.total_variance == pytest.approx(float(m.variance[row.group].sum()))
        want = float(m.mean[row.group].square().sum() - m.variance[row.group].sum() / 20)
        assert row.mean_grad_sq_norm == pytest.approx(want)
        assert row.variance_ratio == pytest.approx(row.total_variance / moments["trace"].total_variance(row.group))
        assert row.num_parameters == {"q_y": 6, "q_w": 8, "model": 9}[row.group]
    enum = df[df.estimator == "enum"].set_index("group")["variance_ratio"]
    assert enum["q_y"] < 1e-20 and enum["model"] < 1e-20
    assert df.loc[df.estimator == "tracegraph_decaying", "objective"].eq("tracegraph").all()


def test_the_same_seed_gives_the_same_table_and_everything_is_put_back():
    net = nn.Linear(2, 1).double()
    guide = make_guide("neural", net)
    guide(X)
    store = pyro.get_param_store()
    store[BASELINE_STATE_PREFIX + "y"] = torch.full((5,), 7.0, dtype=F64)
    a = dict(store.named_parameters())["a"]
    a.grad = torch.ones_like(a)
    before = [p.detach().clone() for p in net.parameters()]
    kw = dict(estimators={"neural": ("tracegraph", guide)}, reference=None, num_draws=10, warmup=20,
              warmup_params=net, seed=4)
    one = gradient_variance(model, guide, X, GROUPS, **kw)
    two = gradient_variance(model, guide, X, GROUPS, **kw)
    assert one.drop(columns="seconds_per_draw").equals(two.drop(columns="seconds_per_draw"))
    assert one["variance_ratio"].isna().all()
    assert all(torch.equal(p, b) for p, b in zip(net.parameters(), before))   # the warm-up is undone
    assert torch.equal(store[BASELINE_STATE_PREFIX + "y"], torch.full((5,), 7.0, dtype=F64))
    assert torch.equal(a.grad, torch.ones_like(a))
    # the warm-up trains the baseline network: without it the variance of q(y|x)'s gradient is larger
    cold = gradient_variance(model, guide, X, GROUPS, **{**kw, "warmup": 0})
    q_y = lambda df: float(df.loc[df.group == "q_y", "total_variance"].iloc[0])  # noqa: E731
    assert q_y(one) < q_y(cold)


def test_a_mixture_vae_brings_its_groups_estimators_and_baseline():
    m = MixtureVAE(3, 2, 3, hidden=(8,), likelihood="gaussian_feature", seed=0)
    x = torch.randn(12, 3)
    df = gradient_variance(m, x, num_draws=4, warmup=3)
    assert set(df["estimator"]) == {"trace", "tracegraph", "tracegraph_decaying", "tracegraph_neural", "enum"}
    assert set(df["group"]) == {"encoder_y", "encoder_z", "decoder", "prior"}
    assert (df.loc[df.estimator == "enum", "variance_ratio"] == 1.0).all()
    sizes = dict(zip(df["group"], df["num_parameters"]))
    assert sizes == {k: sum(p.numel() for p in ps) for k, ps in m.parameter_groups().items()}
    # the estimators that sample y differ only in the gradient of q(y|x): with the same seed the
    # other groups see the same draws and the same gradients
    var = df.set_index(["estimator", "group"])["total_variance"]
    for group in ("encoder_z", "decoder", "prior"):
        values = [var[(e, group)] for e in ("trace", "tracegraph", "tracegraph_decaying", "tracegraph_neural")]
        assert values == pytest.approx([values[0]] * 4, rel=1e-6), group
    assert var[("tracegraph_neural", "encoder_y")] != pytest.approx(var[("trace", "encoder_y")], rel=1e-3)


def test_wrong_arguments_are_refused():
    with pytest.raises(ValueError, match="objective"):
        gradient_moments(model, make_guide(), X, GROUPS, "reinforce")
    with pytest.raises(ValueError, match="num_draws"):
        gradient_moments(model, make_guide(), X, GROUPS, "trace", num_draws=1)
    with pytest.raises(ValueError, match="'nope'"):
        gradient_moments(model, make_guide(), X, {"q": ["nope"]}, "trace")
    with pytest.raises(TypeError, match="groups"):
        gradient_variance(model, make_guide(), X, None)
    with pytest.raises(ValueError, match="reference"):
        gradient_variance(model, make_guide(), X, GROUPS, ["trace"], reference="enum")
    with pytest.raises(TypeError, match="estimator 'x'"):
        gradient_variance(model, make_guide(), X, GROUPS, {"x": 3})
