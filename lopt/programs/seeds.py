"""Seed programs: the paper's AdamW seed, exact AdamW, SGD with momentum, signSGD, Lion, and the
orthogonalised-momentum rules Muon, NorMuon and AdaMuon.

`adamw_paper` is Chen et al.'s warm start (bias correction and eps omitted, weight decay 0.01,
learning rate scaled by 0.001 inside). `adamw_paper_eps` adds Adam's ε = 1e-8 to its denominator:
without it a coordinate whose gradient is exactly zero from the start (a dead ReLU channel: 8 of
mnist1d-conv-16-32's 1,962 parameters at init) makes m/√v = 0/0 = NaN, the whole run scores +inf,
and a search from that seed drifts to programs that never divide by √v. The others reproduce optax's
implementations exactly (tests/test_programs.py): `adamw` declares the step input t for Adam's bias
correction (Kingma & Ba 2015, Algorithm 1); `lion` is Chen et al.'s Algorithm 2 with optax's
defaults (β1 0.9, β2 0.99, weight decay 1e-3); `sgd_momentum` is optax.sgd(momentum=0.9) (heavy
ball, m ← g + 0.9·m); `signsgd` is sign(g) scaled by lr. In these four the `lr` input is the
learning rate itself.
"""

from __future__ import annotations

from lopt.programs.lang import Program, parse

SEEDS: dict[str, str] = {
    "adamw_paper": """
def train(w, g, m, v, lr):
  g2 = square(g)
  m = interp(g, m, 0.9)
  v = interp(g2, v, 0.999)
  sqrt_v = sqrt(v)
  update = m / sqrt_v
  wd = w * 0.01
  update = update + wd
  lr = lr * 0.001
  update = update * lr
  return update, m, v
""",
    "adamw": """
def train(w, g, m, v, lr, t):
  m = interp(g, m, 0.9)
  g2 = square(g)
  v = interp(g2, v, 0.999)
  b1t = power(0.9, t)
  c1 = 1.0 - b1t
  b2t = power(0.999, t)
  c2 = 1.0 - b2t
  m_hat = m / c1
  v_hat = v / c2
  root = sqrt(v_hat)
  denominator = root + 1e-08
  update = m_hat / denominator
  wd = w * 0.0001
  update = update + wd
  update = update * lr
  return update, m, v
""",
    "sgd_momentum": """
def train(w, g, m, v, lr):
  decayed = m * 0.9
  m = g + decayed
  update = m * lr
  return update, m, v
""",
    "signsgd": """
def train(w, g, m, v, lr):
  direction = sign(g)
  update = direction * lr
  return update, m, v
""",
    "lion": """
def train(w, g, m, v, lr):
  c = interp(g, m, 0.9)
  direction = sign(c)
  wd = w * 0.001
  update = direction + wd
  update = update * lr
  m = interp(g, m, 0.99)
  return update, m, v
""",
    "lion_raw": """
def train(w, g, m, v, lr):
  g = clip(g, lr)
  g = arcsin(g)
  m = interp(g, v, 0.899)
  m2 = m * m
  v = interp(g, m, 1.109)
  abs_m = sqrt(m2)
  update = m / abs_m
  wd = w * 0.4602
  update = update + wd
  lr = lr * 0.0002
  m = cosh(update)
  update = update * lr
  return update, m, v
""",
}

# Orthogonalised-momentum rules, written with the matrix functions (lopt.programs.library).
# `muon` is optax.contrib.muon on matrices (β 0.95, Nesterov with its bias corrections,
# Newton–Schulz, width scaling; `lr` the learning rate). `normuon` and `adamuon` are
# lopt.baselines.orthogonal's scale_by_normuon / scale_by_adamuon (Li et al. 2025; Si et al.
# 2025) times `lr`. Unlike those optimizers, which give vectors Adam, a program applies its one
# rule to every tensor, vectors read as one row (lopt.matrix).
# NorMuon's and AdaMuon's shared start: momentum, its Nesterov blend with g, orthogonalised
_NESTEROV_ORTHOGONALIZED = """
def train(w, g, m, v, lr):
  m = interp(g, m, 0.95)
  u = interp(g, m, 0.95)
  o = orthogonalize(u)
"""
SEEDS.update(
    {
        "muon": """
def train(w, g, m, v, lr, t):
  m = interp(g, m, 0.95)
  t1 = t + 1.0
  b1 = power(0.95, t1)
  c1 = 1.0 - b1
  m_hat = m / c1
  m_hat = m_hat * 0.95
  b0 = power(0.95, t)
  c0 = 1.0 - b0
  g_hat = g / c0
  g_hat = g_hat * 0.05
  u = m_hat + g_hat
  o = orthogonalize(u)
  update = width_scale(o)
  update = update * lr
  return update, m, v
""",
        "normuon": _NESTEROV_ORTHOGONALIZED
        + """  o2 = col_ms(o)
  v = interp(o2, v, 0.95)
  root = sqrt(v)
  denominator = root + 1e-10
  n = o / denominator
  size_o = norm(o)
  size_n = norm(n)
  size_n = size_n + 1e-10
  ratio = size_o / size_n
  n = n * ratio
  update = width_scale(n)
  update = update * lr
  return update, m, v
""",
        "adamuon": _NESTEROV_ORTHOGONALIZED
        + """  o2 = square(o)
  v = interp(o2, v, 0.95)
  root = sqrt(v)
  denominator = root + 1e-08
  n = o / denominator
  row = row_ms(n)
  row = sqrt(row)
  mean_square = col_ms(row)
  rms = sqrt(mean_square)
  scale = 0.2 / rms
  update = n * scale
  update = update * lr
  return update, m, v
""",
    }
)

# The paper's seed with Adam's ε in the denominator (module docstring).
SEEDS["adamw_paper_eps"] = SEEDS["adamw_paper"].replace(
    "  update = m / sqrt_v\n", "  denominator = sqrt_v + 1e-08\n  update = m / denominator\n"
)


def seed(name: str) -> Program:
    """A seed program by name; unknown names list the valid ones."""
    if name not in SEEDS:
        raise ValueError(f"unknown seed program {name!r}; valid: {', '.join(SEEDS)}")
    return parse(SEEDS[name])
