import dataclasses
import math

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from unweave.slt import LLCError, SGLDConfig, auto_llc, estimate_llc, hessian_summary, truth
from unweave.slt.callbacks import Divergence, MALAAcceptance, StepState
from unweave.slt.gradients import ChainGradients
from unweave.slt.llc import mean_loss
from unweave.slt.sgld import run_chains, select_parameters
from unweave.slt.updates import SGLD, RMSPropSGLD, update_rule
from unweave.zoo import singular


def test_rrr_formula_agrees_with_deep_linear_formula():
    """Aoyagi & Watanabe (2005) and Aoyagi (2024) are separate derivations; on two layers they
    must agree, in every case and parity."""
    seen = set()
    for M, H, N in [
        (5, 3, 5),
        (2, 1, 2),
        (5, 4, 5),
        (3, 2, 3),
        (4, 3, 8),
        (2, 1, 4),
        (8, 3, 4),
        (4, 1, 2),
        (3, 8, 4),
        (1, 4, 2),
        (6, 2, 3),
        (7, 5, 2),
    ]:
        for r in range(min(M, H, N) + 1):
            seen.add(truth.rrr_case(M, H, N, r))
            assert truth.reduced_rank_regression(M, H, N, r) == pytest.approx(truth.deep_linear([M, H, N], r))
    assert seen == {"1-even", "1-odd", "2", "3", "4"}


def test_closed_forms_known_values():
    assert truth.normal_crossing([1, 2]) == 0.25
    assert truth.reduced_rank_regression(3, 8, 4, 1) == 6.0  # case 4: M N / 2
    assert truth.reduced_rank_regression(5, 5, 5, 5) == 12.5  # full rank: the map is regular, 25 dims / 2
    # rank 0 through a width-1 layer of a deep net: K ~ product of three scalars' squares -> 1/2 * ... (Aoyagi)
    assert truth.deep_linear([1, 1, 1, 1], 0) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="true rank"):
        truth.reduced_rank_regression(2, 2, 2, 3)


def test_normal_crossing_single_power_is_exact():
    """K = w^4 with a wide prior: E[n_beta K] = Gamma(5/4) / Gamma(1/4) = 1/4 for any large n_beta.
    Chains start at the flat point w = 0 and need a long burn-in to reach the tails."""
    model, loader = singular.normal_crossing_task([2], n=1000)
    r = estimate_llc(
        model,
        singular.normal_crossing_loss,
        loader,
        SGLDConfig(epsilon=1e-4, nbeta=1e4, localization=1.0, chains=64, draws=3000, burn_in=1000),
    )
    assert r.llc_mean == pytest.approx(0.25, rel=0.1)
    assert r.n_params == 1 and r.flattened and r.mala_acceptance > 0.9


def test_reduced_rank_regression_within_ten_percent():
    model, loader = singular.deep_linear_task([4, 3, 4], 1, n=1000)
    truth_value = truth.reduced_rank_regression(4, 3, 4, 1)
    r = estimate_llc(
        model,
        singular.half_squared_error,
        loader,
        # 16 chains: with 4, the estimate's spread over seeds (6.27-6.72 against 6) crossed 10% now and then
        SGLDConfig(epsilon=1e-4, nbeta=1e4, localization=100.0, chains=16, draws=800, burn_in=200),
    )
    assert abs(r.llc_mean - truth_value) / truth_value <= 0.1
    assert r.llc_mean < r.n_params / 2  # singular: fewer effective parameters than a regular model


def test_llc_is_n_beta_times_mean_excess_loss():
    """The reported numbers follow from the trace: recompute them independently with numpy."""
    model, loader = singular.deep_linear_task([3, 2, 3], 1, n=200, batch_size=50)
    r = estimate_llc(
        model, singular.half_squared_error, loader, SGLDConfig(epsilon=1e-4, nbeta=500, chains=3, draws=50)
    )
    trace = np.array(r.loss_trace)
    per_chain = r.nbeta * (trace.mean(1) - r.init_loss)
    np.testing.assert_allclose(r.llc_per_chain, per_chain, rtol=1e-10)
    assert r.llc_std_err == pytest.approx(per_chain.std(ddof=1) / math.sqrt(3))
    assert r.init_loss == pytest.approx(0.0, abs=1e-12)  # noiseless data at the true map


def test_default_nbeta_is_n_over_log_n():
    model, loader = singular.deep_linear_task([2, 1, 2], 1, n=500)
    r = estimate_llc(model, singular.half_squared_error, loader, SGLDConfig(chains=1, draws=5))
    assert r.nbeta == pytest.approx(500 / math.log(500))


def test_chains_are_reproducible_one_by_one_and_vmap_matches_loop():
    model, loader = singular.deep_linear_task([3, 2, 3], 1, n=200, batch_size=40)
    run = lambda **kw: (
        estimate_llc(
            model, singular.half_squared_error, loader, SGLDConfig(epsilon=1e-4, nbeta=300, draws=30, **kw)
        ).loss_trace
    )
    four, two = np.array(run(chains=4, vectorize=True)), np.array(run(chains=2, vectorize=True))
    np.testing.assert_allclose(four[:2], two, rtol=1e-4)  # chain c does not depend on how many run
    np.testing.assert_allclose(np.array(run(chains=4, vectorize=False)), four, rtol=1e-4)
    np.testing.assert_array_equal(np.array(run(chains=2, vectorize=True)), two)  # same seed, same numbers


def test_parameter_subset():
    model, loader = singular.deep_linear_task([3, 2, 3], 1, n=200)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    r = estimate_llc(model, singular.half_squared_error, loader, SGLDConfig(chains=2, draws=10, nbeta=100), params="1")
    assert r.n_params == 6  # the second layer only
    for k, v in model.state_dict().items():  # sampling never moves the model itself
        assert torch.equal(v, before[k])
    with pytest.raises(LLCError, match=r"matches no parameter; parameters are: 0.weight, 1.weight"):
        estimate_llc(model, singular.half_squared_error, loader, params="2.weight")


def test_bad_inputs_are_clear_errors():
    model, loader = singular.deep_linear_task([2, 1, 2], 1, n=50)
    empty = DataLoader(TensorDataset(torch.zeros(0, 2), torch.zeros(0, 2)), batch_size=4)
    with pytest.raises(LLCError, match="empty"):
        estimate_llc(model, singular.half_squared_error, empty)
    with torch.no_grad():
        model[0].weight[0, 0] = float("nan")
    with pytest.raises(LLCError, match="loss at the trained weights is nan"):
        estimate_llc(model, singular.half_squared_error, loader)
    with pytest.raises(LLCError, match="epsilon must be a positive step size"):
        SGLDConfig(epsilon=0)


def test_divergence_is_detected_with_advice():
    model, loader = singular.deep_linear_task([3, 2, 3], 1, n=200)
    with pytest.warns(UserWarning, match="lower epsilon"), pytest.raises(LLCError, match="every chain diverged"):
        estimate_llc(model, singular.half_squared_error, loader, SGLDConfig(epsilon=0.5, nbeta=1e4, chains=2, draws=50))


def test_unflattened_trace_warns():
    model, loader = singular.deep_linear_task([4, 3, 4], 1, n=500)
    with pytest.warns(UserWarning, match="not flattened"):  # tiny steps: still climbing from w* at the end
        r = estimate_llc(
            model,
            singular.half_squared_error,
            loader,
            SGLDConfig(epsilon=1e-7, nbeta=1e4, localization=1.0, chains=4, draws=100),
        )
    assert not r.flattened


def test_hessian_counts_flat_directions():
    """RRR 5-3-5 at a rank-1 map: 30 weights, the map's tangent space has r(M+N-r) = 9 directions."""
    model, loader = singular.deep_linear_task([5, 3, 5], 1, n=1000)
    exact = hessian_summary(model, singular.half_squared_error, loader)
    assert exact.method == "exact" and exact.n_params == 30 and exact.near_zero == 21
    slq = hessian_summary(model, singular.half_squared_error, loader, exact_limit=0, lanczos_steps=30, probes=8)
    assert slq.method == "slq" and abs(slq.near_zero - 21) <= 3
    assert slq.max_abs_eigenvalue == pytest.approx(exact.max_abs_eigenvalue, rel=1e-3)


def test_modadd_loss_at_w_star(small_modadd):
    from unweave.zoo.modadd import answer_loss, train_loader

    loader = train_loader(small_modadd.config)
    assert mean_loss(small_modadd.load(), answer_loss, loader) == pytest.approx(
        small_modadd.history[-1]["train_loss"], rel=1e-4
    )


# --- the chain loop's pieces: update rules, callbacks, gradients ---------------------------------------------------


def _chains(cfg, model=None, loader=None, loss_fn=singular.half_squared_error, **kw):
    if model is None:
        model, loader = singular.deep_linear_task([3, 2, 3], 1, n=200)
    return run_chains(model, loss_fn, loader, select_parameters(model, None), cfg.nbeta, cfg, **kw)


def test_a_custom_update_rule_plugs_in():
    """A rule is one class: G = 1/2 everywhere is plain SGLD at half the step size."""

    class HalfStep(SGLD):
        calls = 0

        def preconditioner(self, name, drift):
            self.calls += 1
            return torch.full_like(drift, 0.5)

    cfg = SGLDConfig(epsilon=1e-4, nbeta=300, chains=2, draws=20)
    rule = HalfStep(1e-4)
    custom = _chains(cfg, rule=rule)
    plain = _chains(dataclasses.replace(cfg, epsilon=5e-5))
    assert rule.calls == 20 * 2  # once per step per parameter (two layers)
    np.testing.assert_allclose(custom.losses, plain.losses, rtol=1e-4)
    np.testing.assert_allclose(custom.acceptance, plain.acceptance, rtol=1e-3)  # the same proposal, too
    assert isinstance(update_rule(SGLDConfig(rmsprop=True)), RMSPropSGLD)
    assert type(update_rule(SGLDConfig())) is SGLD


def test_callbacks_see_every_step_and_can_stop_the_chains():
    class StopAtSix:
        def __init__(self):
            self.steps = []

        def __call__(self, state):
            assert set(state.w) == {"0.weight", "1.weight"} and state.loss.shape == (2,)
            assert state.log_target.dtype == torch.float64 and state.G == {"0.weight": None, "1.weight": None}
            self.steps.append(state.step)
            return state.step == 6

    stop, ticks = StopAtSix(), []
    trace = _chains(
        SGLDConfig(epsilon=1e-4, nbeta=300, chains=2, draws=10, burn_in=3),
        callbacks=[stop],
        on_step=lambda: ticks.append(1),
    )
    assert stop.steps == list(range(7))
    assert len(ticks) == 6  # progress runs after the custom callbacks: not on the step that stopped
    assert torch.isfinite(trace.losses[:, :4]).all()  # steps 3-6 are draws 0-3, recorded before the stop
    assert torch.isnan(trace.losses[:, 4:]).all()


def test_divergence_callback_stops_at_the_first_non_finite_loss():
    def state(step, loss):
        return StepState(step, torch.tensor(loss), {}, {}, {}, torch.zeros(2), 1e-3)

    div = Divergence()
    assert not div(state(0, [0.1, 0.2])) and div.step is None
    assert div(state(5, [0.1, float("nan")])) and div.step == 5
    assert div(state(6, [float("inf"), 0.0]))

    calls = []  # the loss turns NaN on its 9th call: one call per step with one looped chain

    def loss_fn(out, y):
        calls.append(1)
        loss = singular.half_squared_error(out, y)
        return loss + float("nan") if len(calls) > 8 else loss

    ticks = []
    trace = _chains(
        SGLDConfig(epsilon=1e-4, nbeta=300, chains=1, draws=20, vectorize=False),
        loss_fn=loss_fn,
        on_step=lambda: ticks.append(1),
    )
    assert len(calls) == 9 and len(ticks) == 8  # stopped at step 8, nothing after
    assert torch.isfinite(trace.losses[:, :8]).all() and torch.isnan(trace.losses[:, 8:]).all()


def _gaussian_state(step, w, G, k, eps):
    """Target N(0, 1/k) per weight: log p = -k/2 |w|^2, drift = -k w."""
    half_sq = 0.5 * k * w.pow(2).sum(1)
    return StepState(step, half_sq, {"w": w}, {"w": -k * w}, {"w": G}, -half_sq, eps, flat=(w, -k * w, G))


@pytest.mark.parametrize("preconditioned", [False, True])
def test_mala_acceptance_is_the_metropolis_hastings_ratio(preconditioned):
    """Against the ratio written with scipy's normal densities: min(1, p(w1) q(w0 | w1) / (p(w0) q(w1 | w0)))
    with q(b | a) = N(a + eps/2 G drift(a), eps G), G taken at the move's start."""
    from scipy.stats import norm

    k, eps = 3.0, 0.3
    gen = torch.Generator().manual_seed(0)
    w0 = torch.randn(5, 3, generator=gen, dtype=torch.float64)
    G = torch.rand(5, 3, generator=gen, dtype=torch.float64) + 0.5 if preconditioned else None
    g = torch.ones_like(w0) if G is None else G
    w1 = w0 + eps / 2 * g * (-k * w0) + (eps * g).sqrt() * torch.randn(5, 3, generator=gen, dtype=torch.float64)
    mala = MALAAcceptance(5)
    mala(_gaussian_state(0, w0, G, k, eps))
    mala(_gaussian_state(1, w1, torch.full_like(w0, 7.0), k, eps))  # the G at w1 plays no part

    a, b, g = w0.numpy(), w1.numpy(), g.numpy()
    log_p = lambda w: norm.logpdf(w, scale=k**-0.5).sum(1)
    log_q = lambda to, fro: norm.logpdf(to, loc=fro - eps / 2 * g * k * fro, scale=np.sqrt(eps * g)).sum(1)
    expected = np.minimum(1, np.exp(log_p(b) + log_q(a, b) - log_p(a) - log_q(b, a)))
    assert 0.05 < expected.min() and expected.max() <= 1 and expected.min() < 0.99  # a real test of the ratio
    np.testing.assert_allclose(mala.acceptance.numpy(), expected, rtol=1e-10)


def test_mala_acceptance_of_sgld_on_a_quadratic():
    """L(w) = w^2 (normal crossing, power 1): the target is N(0, 1/k), k = 2 n_beta + gamma, and SGLD's
    stationary law is N(0, s^2) with s^2 = eps / (1 - (1 - eps k / 2)^2). The mean acceptance should be
    E min(1, ratio) over w ~ N(0, s^2) and one SGLD move from it: near 1 for tiny steps, lower for large."""
    from scipy.stats import norm

    model, loader = singular.normal_crossing_task([1], n=1000)
    nbeta, gamma = 1000.0, 10.0
    k = 2 * nbeta + gamma

    def expected(eps):
        rng = np.random.default_rng(0)
        w = rng.normal(0, np.sqrt(eps / (1 - (1 - eps * k / 2) ** 2)), 400_000)
        w1 = w - eps / 2 * k * w + np.sqrt(eps) * rng.normal(size=w.shape)
        log_q = lambda to, fro: norm.logpdf(to, loc=fro - eps / 2 * k * fro, scale=np.sqrt(eps))
        log_p = lambda x: norm.logpdf(x, scale=k**-0.5)
        return np.minimum(1, np.exp(log_p(w1) + log_q(w, w1) - log_p(w) - log_q(w1, w))).mean()

    def measured(eps):
        cfg = SGLDConfig(epsilon=eps, nbeta=nbeta, localization=gamma, chains=32, draws=300)
        return run_chains(model, singular.normal_crossing_loss, loader, ["w"], nbeta, cfg).acceptance.mean().item()

    tiny, large = 0.01 / k, 3.0 / k
    assert measured(tiny) > 0.999 and expected(tiny) > 0.999
    assert measured(large) == pytest.approx(expected(large), abs=0.02)
    assert measured(large) < 0.8


def test_chains_fall_back_to_a_loop_when_vmap_cannot_trace_the_model():
    class Branchy(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x):  # .item() on a parameter: vmap cannot batch it
            return self.inner(x) if self.inner[0].weight.sum().item() > -1e30 else -self.inner(x)

    inner, loader = singular.deep_linear_task([3, 2, 3], 1, n=200)
    model = Branchy(inner)
    cfg = SGLDConfig(epsilon=1e-4, nbeta=300, chains=2, draws=10)
    with pytest.warns(UserWarning, match="could not be vectorised"):
        fallen = _chains(dataclasses.replace(cfg, vectorize=True), model, loader)
    looped = _chains(dataclasses.replace(cfg, vectorize=False), model, loader)
    assert not fallen.vectorized and torch.equal(fallen.losses, looped.losses)

    grads = ChainGradients(inner, singular.half_squared_error, "auto")
    w = {n: p.detach().unsqueeze(0).repeat(2, 1, 1) for n, p in inner.named_parameters()}
    x, y = loader.dataset.tensors
    used = []
    for _ in range(6):
        loss, g = grads(w, [x, x], [y, y], True)
        used.append(grads.vectorized)
        assert loss.shape == (2,) and g["0.weight"].shape == (2, 2, 3)
    assert used[:3] == [True, True, False] and len(set(used[3:])) == 1  # timed both; the 4th call decides


def test_row_losses_at_w_star_are_the_forward_passes_they_replace():
    """With a loss that says it is a mean over rows, minibatch SGLD takes each batch's loss at w*
    from rows computed once; the chains and their recorded traces are those of a forward per step."""
    model, loader = singular.deep_linear_task([3, 2, 3], 1, n=200, batch_size=32)
    x, y = loader.dataset.tensors
    out = model(x).detach()
    assert singular.half_squared_error(out, y).item() == pytest.approx(0.5 * ((out - y) ** 2).sum(-1).mean().item())
    assert hasattr(singular.half_squared_error, "per_row")

    def plain(o, t):  # the same loss, with nothing said about rows
        return 0.5 * (o - t).pow(2).sum(-1).mean()

    cfg = SGLDConfig(epsilon=1e-4, nbeta=100.0, localization=10.0, chains=3, draws=40)
    fast = _chains(cfg, model, loader, singular.half_squared_error)
    slow = _chains(cfg, model, loader, plain)
    assert fast.relative and slow.relative
    torch.testing.assert_close(fast.losses, slow.losses, rtol=1e-5, atol=1e-7)


def test_modadd_answer_loss_is_the_mean_of_its_rows(small_modadd):
    import torch.nn.functional as F

    from unweave.zoo.modadd import answer_loss, make_data

    data = make_data(small_modadd.config)
    with torch.no_grad():
        out = small_modadd.load()(data.tokens[:100])
    labels = data.labels[:100]
    expected = F.cross_entropy(out[:, -1].double(), labels)
    assert answer_loss(out, labels).item() == pytest.approx(expected.item(), rel=1e-12)
    assert answer_loss.per_row(out, labels).mean().item() == pytest.approx(expected.item(), rel=1e-12)


@pytest.mark.parametrize("scheme", ["euler", "lm"])
def test_the_step_noise_scheme_against_the_closed_form_stationary_variance(scheme):
    """K = w^2 at a step eps (2 n_beta + gamma) = 1/2: Euler SGLD's stationary variance is inflated
    by 1 / (1 - 1/8); the Leimkuhler-Matthews noise (mean of consecutive draws) makes it exact."""
    model, loader = singular.normal_crossing_task([1], n=1000)
    nbeta, gamma = 145.0, 0.29
    a = 2 * nbeta + gamma  # the drift's stiffness along w
    eps = 0.5 / a
    cfg = SGLDConfig(epsilon=eps, nbeta=nbeta, localization=gamma, chains=8, draws=4000, burn_in=500, scheme=scheme)
    r = estimate_llc(model, singular.normal_crossing_loss, loader, cfg)
    exact = nbeta / a  # n_beta E[w^2] under the localised posterior
    expected = exact / (1 - eps * a / 4) if scheme == "euler" else exact
    assert abs(r.llc_mean - expected) <= 3 * r.llc_std_err + 0.01 * expected, (r.llc_mean, expected, r.llc_std_err)
    assert abs(r.llc_mean - exact) / exact > 0.08 if scheme == "euler" else abs(r.llc_mean - exact) / exact < 0.03
    assert math.isnan(r.mala_acceptance) == (scheme == "lm")


def test_the_rule_refuses_a_scheme_without_mala_acceptance():
    model, loader = singular.normal_crossing_task([1], n=1000)
    with pytest.raises(LLCError, match="MALA acceptance"):
        auto_llc(model, singular.normal_crossing_loss, loader, base=SGLDConfig(scheme="lm"))
    with pytest.raises(LLCError, match="scheme must be one of euler, lm"):
        SGLDConfig(scheme="heun")
