"""Attacks against the papers' formulas: exact values on small inputs, the search of El Mhamdi
et al., bit flips on known floats, frequencies of the gambler, properties and validation."""

from __future__ import annotations

import itertools
import math
import struct
from statistics import NormalDist

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from byzsgd import aggregators as G
from byzsgd import attacks as A
from byzsgd.attacks import alie_z_max, flip_bits

# From the registry: a new attack is held to the same contract by being registered.
CLASSIC = [n for n in A.names() if not A.spec(n).dimensional]


def data(h=8, f=3, d=6, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn((h + f, d), generator=g, dtype=torch.float64) + 0.5).to(dtype)
    return x[:h].clone(), x[h:].clone()


def quadratic_loss(v):
    return (v - 1.0).square().sum()


def context(h, f, rule=None):
    """Every keyword the engine passes to a classic attack."""
    return {"f": f, "n": h + f, "rule": rule if rule is not None else G.bind("krum", f),
            "generator": torch.Generator().manual_seed(1), "backdoor_loss": quadratic_loss}


# --- registry --------------------------------------------------------------------------------

def test_names_and_attributes():
    """Each registered attack is an instance of the calling convention it declares."""
    for name in A.names():
        attack = A.get(name)
        assert attack.name == name
        assert attack.dimensional == isinstance(attack, A.DimensionalAttack)
        assert attack.dimensional != isinstance(attack, A.ClassicAttack)
        assert attack.knowledge == attack.supported_knowledge[0]
        assert A.describe(name) == attack.summary
        assert set(attack.params) <= set(A.defaults(name))
    assert A.get("alie", knowledge="omniscient").knowledge == "omniscient"
    assert A.get("lp-coordinate", knowledge="own").knowledge == "own"


def test_unknown_name_and_param():
    with pytest.raises(ValueError, match=r"unknown attack 'nope'.*alie"):
        A.get("nope")
    with pytest.raises(ValueError, match=r"ipm: unknown parameter.*eps.*accepts.*epsilon"):
        A.get("ipm", eps=0.1)
    with pytest.raises(ValueError, match="knowledge"):
        A.get("omniscient", knowledge="own")
    with pytest.raises(ValueError, match="knowledge"):
        A.get("alie", knowledge="psychic")


# --- common contract -------------------------------------------------------------------------

@pytest.mark.parametrize("name", CLASSIC)
def test_classic_contract(name):
    honest, own = data(h=8, f=2, d=5, dtype=torch.float64)
    h0, o0 = honest.clone(), own.clone()
    out = A.get(name)(honest=honest, own=own, **context(8, 2), unused_keyword=object())
    assert out.shape == (2, 5) and out.dtype == torch.float64
    assert out.data_ptr() not in (honest.data_ptr(), own.data_ptr())
    assert torch.equal(honest, h0) and torch.equal(own, o0)
    empty = A.get(name)(honest=honest, own=own[:0], **{**context(8, 0), "f": 0})
    assert empty.shape == (0, 5) and empty.dtype == torch.float64


@pytest.mark.parametrize("name", CLASSIC)
def test_classic_rows_written_into_out(name):
    """``out=``: the same rows written where the caller wants them (the simulator forges in
    place, after the honest rows of the received matrix); a wrong out is refused."""
    honest, own = data(h=8, f=2, d=5, dtype=torch.float64)
    want = A.get(name)(honest=honest, own=own, **context(8, 2))
    matrix = torch.full((10, 5), -7.0, dtype=torch.float64)
    matrix[:8] = honest
    got = A.get(name)(honest=matrix[:8], own=own, **context(8, 2), out=matrix[8:])
    assert got.data_ptr() == matrix[8].data_ptr()
    torch.testing.assert_close(matrix[8:], want)
    torch.testing.assert_close(matrix[:8], honest)
    with pytest.raises(ValueError, match="out must be"):
        A.get(name)(honest=honest, own=own, **context(8, 2), out=torch.empty(3, 5))


@pytest.mark.parametrize("name", ["gaussian", "lp-coordinate", "bit-flip", "gambler"])
def test_seeded_runs_reproducible(name):
    honest, own = data(h=8, f=2, d=40)
    params = {"gambler": {"probability": 0.2}, "lp-coordinate": {"knowledge": "own"}}
    attack = A.get(name, **params.get(name, {}))  # lp, own: draws its simulated honest rows

    def run(seed):
        gen = torch.Generator().manual_seed(seed)
        if attack.dimensional:
            return attack(gradients=honest, generator=gen)[0]
        return attack(honest=honest, own=own, f=2, rule=G.bind("krum", 2), generator=gen)
    assert torch.equal(run(3), run(3))
    if name != "lp-coordinate":
        assert not torch.equal(run(3), run(4))


def test_validation_of_inputs():
    honest, own = data(h=6, f=2, d=4)
    ipm = A.get("ipm")
    with pytest.raises(ValueError, match="f must satisfy f >= 0"):
        ipm(honest=honest, f=-1)
    with pytest.raises(ValueError, match="f must be an int"):
        ipm(honest=honest, f=1.5)
    with pytest.raises(ValueError, match="honest must be a 2-D"):
        ipm(honest=honest[0], f=1)
    with pytest.raises(ValueError, match="own must have f=3 rows"):
        ipm(honest=honest, own=own, f=3)
    with pytest.raises(ValueError, match="same dimension"):
        ipm(honest=honest, own=own[:, :3], f=2)
    with pytest.raises(ValueError, match="honest must have n - f = 5 rows"):
        ipm(honest=honest, f=2, n=7)
    with pytest.raises(ValueError, match="needs honest="):
        ipm(own=own, f=2)
    with pytest.raises(ValueError, match="needs own="):
        A.get("sign-flip")(honest=honest, f=2)
    with pytest.raises(ValueError, match="floating"):
        ipm(honest=honest.long(), f=2)


# --- Xie et al., Generalized Byzantine-tolerant SGD 5.2-5.3 ---------------------------------

def test_gaussian_moments():
    honest, _ = data(h=4, f=0, d=500)
    gen = torch.Generator().manual_seed(0)
    out = A.get("gaussian")(honest=honest, f=200, generator=gen).double()
    assert out.shape == (200, 500)
    assert abs(float(out.mean())) < 4 * 200 / math.sqrt(out.numel())
    assert float(out.std()) == pytest.approx(200.0, rel=0.01)
    shifted = A.get("gaussian", sigma=2.0, mean=5.0)(honest=honest, f=100, generator=gen)
    assert float(shifted.mean()) == pytest.approx(5.0, abs=0.05)
    assert float(shifted.std()) == pytest.approx(2.0, rel=0.02)


def test_omniscient_exact():
    honest, _ = data()
    out = A.get("omniscient")(honest=honest, f=3)
    assert torch.equal(out, (-1e20 * honest.sum(dim=0)).expand(3, -1))
    out = A.get("omniscient", scale=2.0)(honest=honest, f=1)
    assert torch.equal(out[0], -2.0 * honest.sum(dim=0))


def test_sign_flip_exact():
    honest, own = data()
    assert torch.equal(A.get("sign-flip")(honest=honest, own=own, f=3), -own)
    assert torch.equal(A.get("sign-flip", scale=4.0)(own=own, f=3), -4.0 * own)


def test_label_flip():
    lf = A.get("label-flip")
    y = torch.arange(10)
    assert torch.equal(lf.label_map(y, 10), 9 - y)
    assert torch.equal(lf.label_map(torch.tensor([0, 1]), 2), torch.tensor([1, 0]))
    honest, own = data()
    out = lf(honest=honest, own=own, f=3)
    assert torch.equal(out, own) and out.data_ptr() != own.data_ptr()
    with pytest.raises(ValueError, match="0 <= y < num_classes=10"):
        lf.label_map(torch.tensor([10]), 10)
    with pytest.raises(ValueError, match="integer"):
        lf.label_map(torch.tensor([1.0]), 10)


# --- Fall of Empires 6.2-6.3 -------------------------------------------------------------------

@pytest.mark.parametrize("epsilon", [0.1, 0.5, 10.0, -10.0])
def test_ipm_exact(epsilon):
    honest, own = data()
    out = A.get("ipm", epsilon=epsilon)(honest=honest, own=own, f=3)
    assert torch.equal(out, (-epsilon * honest.mean(dim=0)).expand(3, -1))
    out = A.get("ipm", epsilon=epsilon, knowledge="own")(honest=honest, own=own, f=3)
    assert torch.equal(out, (-epsilon * own.mean(dim=0)).expand(3, -1))


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 6), st.integers(1, 4), st.integers(1, 5), st.floats(0, 10),
       st.integers(0, 1000))
def test_ipm_inner_product_nonpositive(h, f, d, epsilon, seed):
    honest, _ = data(h=h, f=0, d=d, seed=seed, dtype=torch.float64)
    out = A.get("ipm", epsilon=epsilon)(honest=honest, f=f)
    assert float(out[0] @ honest.mean(dim=0)) <= 1e-12


# --- A Little Is Enough ----------------------------------------------------------------------

def test_z_max_paper_values():
    assert round(alie_z_max(50, 24), 2) == 1.75                # 3.3, example
    assert alie_z_max(51, 12) == pytest.approx(0.5992, abs=1e-4)  # 4.x: s = 14, Phi^-1(37/51)


@settings(max_examples=60, deadline=None)
@given(st.integers(3, 500), st.data())
def test_z_max_definition(n, draw):
    f = draw.draw(st.integers(0, n // 2))
    s = math.floor(n / 2 + 1) - f
    z = alie_z_max(n, f)
    assert NormalDist().cdf(z) == pytest.approx((n - s) / n, abs=1e-9)
    assert NormalDist().cdf(z - 1e-6) < (n - s) / n          # the largest z with Phi(z) < .
    if f + 1 <= n // 2:
        assert alie_z_max(n, f + 1) > z                        # more attackers, wider range


def test_z_max_validation():
    with pytest.raises(ValueError, match="already hold a majority"):
        alie_z_max(50, 26)
    with pytest.raises(ValueError, match="0 <= f <= n"):
        alie_z_max(10, 11)
    with pytest.raises(ValueError, match="0 <= f <= n"):
        alie_z_max(10, -1)
    with pytest.raises(ValueError, match="n >= 1"):
        alie_z_max(0, 0)
    assert alie_z_max(51, 25) > 0 and alie_z_max(50, 25) > 0   # s = 1: a minority's edge


def test_alie_exact():
    """mu + z * sigma (sigma the Bessel-corrected std), equal rows; float64 so the only
    difference from torch's own std is rounding."""
    honest, own = (t.double() for t in data(h=8, f=3, d=6))

    def same(out, ref):
        assert torch.allclose(out, ref.expand(3, -1), rtol=1e-12, atol=0)
        assert torch.equal(out, out[:1].expand(3, -1))

    same(A.get("alie", z=1.5)(honest=honest, own=own, f=3), own.mean(0) + 1.5 * own.std(0))
    same(A.get("alie", z=1.0, knowledge="omniscient")(honest=honest, own=own, f=3),
         honest.mean(0) + 1.0 * honest.std(0))
    z = alie_z_max(11, 3)
    same(A.get("alie")(honest=honest, own=own, f=3), own.mean(0) + z * own.std(0))  # n = h + f
    same(A.get("alie")(own=own, f=3, n=11), own.mean(0) + z * own.std(0))


def test_alie_all_workers_and_single_sample():
    _, own = data(h=0, f=5, d=4)
    # Table 1: every worker shifts its parameters by z sigma (f = n, no correct worker).
    out = A.get("alie", z=0.5)(honest=own[:0], own=own, f=5, n=5)
    torch.testing.assert_close(out, (own.mean(0) + 0.5 * own.std(0)).expand(5, -1))
    with pytest.raises(ValueError, match=r"already hold a majority.*pass z"):
        A.get("alie")(own=own, f=5, n=5)
    # one sample: sigma = 0, the attacker sends its own gradient
    assert torch.equal(A.get("alie", z=1.0)(own=own[:1], f=1, n=5), own[:1])
    with pytest.raises(ValueError, match="needs n="):
        A.get("alie")(own=own, f=5)


def linear_backdoor(d_in=5, classes=3, seed=0, dtype=torch.float32):
    """A linear softmax model at w0; v is a gradient, the model it produces is w0 - 0.5 v."""
    g = torch.Generator().manual_seed(seed)
    w0 = torch.randn(d_in * classes, generator=g, dtype=dtype)
    x = torch.randn(4, d_in, generator=g, dtype=dtype)
    target = (torch.argmax(x @ w0.view(d_in, classes), dim=1) + 1) % classes

    def loss(v):
        logits = x @ (w0 - 0.5 * v).view(d_in, classes)
        return torch.nn.functional.cross_entropy(logits, target)
    return loss, d_in * classes


def test_alie_backdoor_in_range_and_lowers_loss():
    loss, d = linear_backdoor()
    g = torch.Generator().manual_seed(1)
    own = torch.randn(6, d, generator=g)
    honest = torch.randn(10, d, generator=g)
    mu, sigma = own.mean(0), own.std(0)
    # sgd with an odd number of steps - 1 (flips) pushes the wrong way, as the literal
    # procedure does (test_alie_backdoor_sgd_is_the_literal_procedure)
    for z, (method, steps) in itertools.product((0.2, 1.0), (("sgd", 5), ("minimize", 20))):
        attack = A.get("alie-backdoor", z=z, alpha=0.5, steps=steps, method=method)
        out = attack(honest=honest, own=own, f=6, backdoor_loss=loss)
        assert torch.equal(out, out[:1].expand(6, -1))
        assert bool(((out - mu).abs() <= z * sigma * (1 + 1e-6) + 1e-6).all())
        assert float(loss(out[0])) < float(loss(mu))
    default = A.get("alie-backdoor")
    assert (default.alpha, default.z, default.steps, default.method, default.lr) == (
        0.2, 0.2, 5, "sgd", 0.1)
    assert A.get("alie-backdoor", method="minimize").lr == 0.5
    out = default(honest=honest, own=own, f=6, backdoor_loss=loss)
    assert float(loss(out[0])) < float(loss(mu))
    torch.testing.assert_close(A.get("alie-backdoor", steps=0)(own=own, f=6, n=16,
                                                               backdoor_loss=loss)[0], mu)
    with torch.no_grad():                                       # works under an engine's no_grad
        out2 = default(honest=honest, own=own, f=6, backdoor_loss=loss)
    assert torch.equal(out, out2)
    with pytest.raises(ValueError, match="needs backdoor_loss="):
        default(honest=honest, own=own, f=6)
    with pytest.raises(ValueError,
                       match=r"alie-backdoor: alpha must be a float in \[0, 1\], got 1.5"):
        A.get("alie-backdoor", alpha=1.5)
    with pytest.raises(ValueError, match="method must be one of 'sgd', 'minimize', got 'adam'"):
        A.get("alie-backdoor", method="adam")


def literal_algorithm4(loss, mu, sigma, *, alpha, z, lr, steps):
    """A Little Is Enough's Algorithm 4 read literally: plain gradient descent on v from mu on
    alpha * l_backdoor + (1 - alpha) * l_delta (eq. 3-4), gradients re-evaluated at every
    iterate (float64), then the clamp to mu +/- z sigma."""
    scale = (z * sigma).clamp(min=1e-5)
    v = mu.clone()
    for _ in range(steps):
        v = v.detach().requires_grad_(True)
        total = alpha * loss(v) + (1 - alpha) * ((v - mu) / scale).square().sum()
        (grad,) = torch.autograd.grad(total, v)
        v = v - lr * grad
    return torch.maximum(mu - z * sigma, torch.minimum(v.detach(), mu + z * sigma))


@pytest.mark.parametrize("steps", [1, 2, 4, 5])
def test_alie_backdoor_sgd_is_the_literal_procedure(steps):
    """With gradient-sized sigma the literal descent explodes with alternating signs and the
    clamp leaves the edge push, mu - z sigma sign(grad l_backdoor(mu)) after an even number of
    flips (steps - 1), reversed after an odd one. The attack's closed form agrees."""
    loss64, d = linear_backdoor(dtype=torch.float64)
    g = torch.Generator().manual_seed(3)
    own = 1e-2 * torch.randn(6, d, generator=g, dtype=torch.float64)
    mu, sigma = own.mean(0), own.std(0)
    literal = literal_algorithm4(loss64, mu, sigma, alpha=0.2, z=0.2, lr=0.1, steps=steps)
    attack = A.get("alie-backdoor", alpha=0.2, z=0.2, lr=0.1, steps=steps)
    out = attack(own=own.float(), f=6, n=16, backdoor_loss=lambda v: loss64(v.double()))[0]
    torch.testing.assert_close(out.double(), literal, rtol=1e-5, atol=1e-6)
    if steps > 1:  # on an edge: the descent side after an even number (steps - 1) of flips
        side = 1.0 if steps % 2 == 1 else -1.0
        push = mu - side * 0.2 * sigma * torch.sign(torch.func.grad(loss64)(mu))
        torch.testing.assert_close(out.double(), push, rtol=1e-5, atol=1e-7)


# --- Hidden Vulnerability 3.2-3.3 --------------------------------------------------------------

def byzantine_selected(rule, honest, b, f):
    chosen = rule.select(torch.cat([honest, b.expand(f, -1)])).selected
    return bool((chosen >= honest.shape[0]).any())


@pytest.mark.parametrize(("rule_name", "f"),
                         [("krum", 2), ("medoid", 2), ("brute", 2), ("bulyan", 1)])
@pytest.mark.parametrize("name", ["lp-coordinate", "linf"])
@pytest.mark.parametrize("seed", [0, 1])
def test_leeway_gamma_is_largest_selected(rule_name, f, name, seed):
    honest, _ = data(h=8, f=0, d=10, seed=seed)
    rule = G.bind(rule_name, f)
    tol = 1e-3
    for sign in (1, -1):
        attack = A.get(name, sign=sign, tol=tol, **({"coordinate": 3} if name != "linf" else {}))
        out = attack(honest=honest, f=f, rule=rule)
        gamma = attack.last_gamma
        assert gamma * sign > 0
        e = torch.ones(10) if name == "linf" else torch.eye(10)[3]
        center = honest.mean(0)
        assert torch.equal(out, (center + gamma * e).expand(f, -1))
        assert byzantine_selected(rule, honest, center + gamma * e, f)
        assert not byzantine_selected(rule, honest, center + gamma * (1 + 2 * tol) * e, f)


def test_leeway_rules_and_variants():
    honest, own = data(h=8, f=2, d=10)
    attack = A.get("lp-coordinate")
    with pytest.raises(ValueError, match="does not select rows"):
        attack(honest=honest, f=2, rule=G.bind("median", 2))
    with pytest.raises(ValueError, match="needs rule="):
        attack(honest=honest, f=2)
    fixed = A.get("linf", gamma=0.25)(honest=honest, f=2, rule=G.bind("median", 2))
    assert torch.equal(fixed, (honest.mean(0) + 0.25).expand(2, -1))
    mine = A.get("lp-coordinate", knowledge="own")
    out = mine(honest=honest, own=own, f=2, rule=G.bind("krum", 2),
               generator=torch.Generator().manual_seed(0))
    assert torch.equal(out, (own.mean(0) + mine.last_gamma * torch.eye(10)[0]).expand(2, -1))
    assert mine.last_gamma > 0
    with pytest.raises(ValueError, match="coordinate < d=10"):
        A.get("lp-coordinate", coordinate=10)(honest=honest, f=2, rule=G.bind("krum", 2))
    with pytest.raises(ValueError, match="sign must be"):
        A.get("linf", sign=2)
    with pytest.raises(ValueError, match=r"linf: tol must be a float in \(0, inf\), got 0"):
        A.get("linf", tol=0)


# --- Generalized Byzantine-tolerant SGD 5.4-5.5: dimensional attacks ------------------------

def f32_from_bits(word):
    return struct.unpack(">f", struct.pack(">I", word))[0]


def test_flip_bits_known_floats():
    one = torch.tensor([1.0])
    assert flip_bits(one, [32]).item() == -1.0                       # sign
    assert flip_bits(one, [23]).item() == 1.5                        # top mantissa bit
    assert flip_bits(one, [1]).item() == f32_from_bits(0x3F800001)   # least significant
    assert flip_bits(torch.tensor([2.0]), [24]).item() == 4.0        # lowest exponent bit
    # 1.0 = 0x3F800000; bits 22, 30, 31, 32 = 0xE0200000 -> 0xDFA00000 = -1.25 * 2^64
    assert flip_bits(one, (22, 30, 31, 32)).item() == -1.25 * 2.0 ** 64
    assert f32_from_bits(0x3F800000 ^ 0xE0200000) == -1.25 * 2.0 ** 64
    # -0.75 = 0xBF400000 -> 0x5F600000 = 1.75 * 2^63
    assert flip_bits(torch.tensor([-0.75]), (22, 30, 31, 32)).item() == 1.75 * 2.0 ** 63
    x64 = torch.tensor([1.0], dtype=torch.float64)
    assert flip_bits(x64, (32,)).dtype == torch.float64 and flip_bits(x64, (32,)).item() == -1.0


@settings(max_examples=50, deadline=None)
@given(st.lists(st.floats(width=32, allow_nan=False), min_size=1, max_size=8),
       st.sets(st.integers(1, 32), min_size=1, max_size=6))
def test_flip_bits_involution(values, bits):
    x = torch.tensor(values, dtype=torch.float32)
    once = flip_bits(x, bits)
    diff = torch.bitwise_xor(once.view(torch.int32), x.view(torch.int32))
    expected = sum(1 << (b - 1) for b in bits)
    assert all((int(w) & 0xFFFFFFFF) == expected for w in diff)
    assert torch.equal(flip_bits(once, bits).view(torch.int32), x.view(torch.int32))


def test_bit_flip_pattern():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(20, 1500, generator=g)
    x0 = x.clone()
    out, mask = A.get("bit-flip")(gradients=x, generator=g)
    assert torch.equal(x, x0)
    assert mask.dtype == torch.bool and mask.shape == x.shape
    assert torch.equal(mask[:, :1000].sum(0), torch.ones(1000, dtype=torch.long))
    assert not mask[:, 1000:].any()
    assert torch.equal(out[~mask], x[~mask])
    assert torch.equal(out[mask], flip_bits(x[mask], (22, 30, 31, 32)))
    assert len(set(mask[:, :1000].int().argmax(0).tolist())) > 10    # rows vary per coordinate
    out, mask = A.get("bit-flip", coordinates=None, per_coordinate=3, bits=32)(
        gradients=x[:, :50].double(), generator=g)
    assert out.dtype == torch.float64 and torch.equal(mask.sum(0), torch.full((50,), 3))
    assert torch.equal(out[mask], -x[:, :50].double()[mask])
    _, mask = A.get("bit-flip")(gradients=x[:5, :7])               # d < 1000: all coordinates
    assert torch.equal(mask.sum(0), torch.ones(7, dtype=torch.long))


def test_bit_flip_validation():
    for bits in [(0,), (33,), (22, 22), ()]:
        with pytest.raises(ValueError, match="bits"):
            A.get("bit-flip", bits=bits)
    with pytest.raises(ValueError, match="per_coordinate"):
        A.get("bit-flip", per_coordinate=-1)
    with pytest.raises(ValueError, match="per_coordinate <= n=4"):
        A.get("bit-flip", per_coordinate=5)(gradients=torch.zeros(4, 3))
    with pytest.raises(ValueError, match="gradients must be a 2-D"):
        A.get("bit-flip")(gradients=torch.zeros(4))


def test_gambler_shard_and_frequency():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(20, 100_003, generator=g) + 1.0
    x0 = x.clone()
    attack = A.get("gambler", server=7, probability=0.01, scale=-3.0)
    start, stop = attack.shard(x.shape[1])
    assert (start, stop) == (7 * 5000 + 3, 8 * 5000 + 3)         # 100003 = 20 * 5000 + 3
    assert [A.get("gambler", server=s).shard(100_003)[1] - A.get("gambler", server=s).shard(
        100_003)[0] for s in (0, 2, 3, 19)] == [5001, 5001, 5000, 5000]
    out, mask = attack(gradients=x, generator=g)
    assert torch.equal(x, x0)
    assert not mask[:, :start].any() and not mask[:, stop:].any()
    count = int(mask.sum())
    expected = 20 * (stop - start) * 0.01
    assert abs(count - expected) < 5 * math.sqrt(expected)
    assert torch.equal(out[mask], -3.0 * x[mask]) and torch.equal(out[~mask], x[~mask])
    assert bool(mask.any(dim=1).all())                            # every worker's values hit
    default = A.get("gambler")
    assert (default.servers, default.server, default.probability, default.scale) == \
        (20, 0, 0.0005, -1e20)
    out, mask = A.get("gambler", probability=1.0)(gradients=x[:2, :40])
    assert mask[:, :2].all() and not mask[:, 2:].any()


def test_gambler_validation():
    for params, match in [({"probability": 1.5}, r"probability must be a float in \[0, 1\]"),
                          ({"probability": -0.1}, r"probability must be a float in \[0, 1\]"),
                          ({"server": 20}, "0 <= server < servers"),
                          ({"servers": 0}, r"servers must be an int in \[1, inf\), got 0")]:
        with pytest.raises(ValueError, match=match):
            A.get("gambler", **params)


# -- the leeway search asks the rule through the candidates' closed-form geometry ---------------

_CANDIDATE_RULES = [("krum", {}), ("multi-krum", {"m": 3}), ("medoid", {}), ("brute", {}),
                    ("bulyan", {}), ("bulyan", {"base": "medoid"}),
                    ("bulyan", {"base": "geomed"}), ("bulyan", {"base": "brute"})]


@pytest.mark.parametrize("rule_name, params", _CANDIDATE_RULES)
@pytest.mark.parametrize("p", [2.0, math.inf])
@pytest.mark.parametrize("direction", ["coordinate", "ones"])
@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_candidate_geometry_equals_the_geometry_of_the_assembled_input(
        rule_name, params, p, direction, sign):
    from byzsgd.aggregators.distances import geometry
    from byzsgd.attacks.leeway import CandidateGeometry

    if rule_name == "bulyan" and params.get("base") == "geomed" and p != 2:
        pytest.skip("Bulyan(GeoMed) is Euclidean only")
    g = torch.Generator().manual_seed(3)
    h, f, d = 9, 2, 40
    honest = torch.randn(h, d, generator=g) + 0.3 * torch.randn(d, generator=g)
    center = honest.mean(dim=0)
    e = sign * (torch.ones(d) if direction == "ones" else torch.nn.functional.one_hot(
        torch.tensor(5), d).float())
    rule = G.bind(rule_name, f=f, **({"p": p} if p != 2 else {}), **params)
    cand = CandidateGeometry.build(honest, center, e, f, p)
    assert cand is not None
    for gamma in (0.0, 0.3, 1.7, 6.0, 40.0):
        x = torch.cat([honest, (center + gamma * e).expand(f, -1)]).double()
        want = geometry(x, p)
        got = cand.at(gamma)
        torch.testing.assert_close(got.sqdist, want.sqdist, rtol=1e-6, atol=1e-5)
        chosen = rule.selection(got)
        if rule_name == "bulyan" and params.get("base") in ("brute", "geomed") and p != 2:
            assert chosen is None  # needs the rows: the search falls back to running the rule
            continue
        assert chosen is not None
        # the f Byzantine copies are identical: which of them wins a tie is immaterial
        want_rows = rule.select(x.float()).selected
        assert torch.equal(chosen.clamp(max=h).unique(), want_rows.clamp(max=h).unique())


@pytest.mark.parametrize("attack_name, p", [("lp-coordinate", 2.0), ("linf", math.inf),
                                            ("lp-coordinate", math.inf), ("linf", 2.0)])
@pytest.mark.parametrize("rule_name", ["krum", "bulyan"])
@pytest.mark.parametrize("sign", [1, -1])
def test_leeway_search_through_the_geometry_finds_the_generic_gamma(
        attack_name, p, rule_name, sign, monkeypatch):
    from byzsgd.attacks import leeway

    g = torch.Generator().manual_seed(5)
    honest = torch.randn(13, 60, generator=g)
    rule = G.bind(rule_name, f=3, **({"p": p} if p != 2 else {}))
    attack = A.get(attack_name, sign=sign)
    built = []
    original = leeway.CandidateGeometry.build.__func__
    monkeypatch.setattr(leeway.CandidateGeometry, "build", classmethod(
        lambda cls, *a: built.append(original(cls, *a)) or built[-1]))
    fast = attack(honest=honest, f=3, n=16, rule=rule, generator=g)
    assert built and built[-1] is not None  # the closed form served this search
    gamma_fast = attack.last_gamma
    monkeypatch.setattr(leeway.CandidateGeometry, "build", classmethod(lambda *a, **k: None))
    attack(honest=honest, f=3, n=16, rule=rule, generator=g)
    assert gamma_fast is not None and gamma_fast * sign > 0
    assert math.isclose(gamma_fast, attack.last_gamma, rel_tol=2e-3)
    assert fast.shape == (3, 60)


@pytest.mark.parametrize("m, d", [(1, 7), (2, 1), (12, 3000), (39, 2049)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_alie_moments_equal_torch_mean_and_sample_std(m, d, dtype):
    from byzsgd.attacks._moments import mean_std

    x = 0.3 + 0.01 * torch.randn(m, d, generator=torch.Generator().manual_seed(m * d),
                                 dtype=dtype)
    mu, sigma = mean_std(x)
    assert mu.dtype == sigma.dtype == dtype and mu.shape == sigma.shape == (d,)
    torch.testing.assert_close(mu, x.mean(dim=0))
    torch.testing.assert_close(sigma, x.std(dim=0) if m > 1 else torch.zeros(d, dtype=dtype))


def test_leeway_search_with_a_non_finite_honest_row_falls_back_to_the_rule():
    from byzsgd.attacks.leeway import CandidateGeometry

    g = torch.Generator().manual_seed(8)
    honest = torch.randn(10, 30, generator=g)
    honest[3, 4] = float("nan")
    assert CandidateGeometry.build(honest, honest[0], torch.ones(30), 2, 2.0) is None
    attack = A.get("lp-coordinate")
    out = attack(honest=honest, f=2, n=12, rule=G.bind("krum", 2), generator=g)
    assert out.shape == (2, 30) and attack.last_gamma is not None
    assert math.isfinite(attack.last_gamma)
