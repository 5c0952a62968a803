"""Training signals that reach each gate per image: REINFORCE (the authors' second stage) and batch-shaping.

Straight-through gates trained on cross-entropy + alpha * energy learn a
static pruning here (docs/experiments/static-front.md): the gradient that
reaches a gate is a batch-level push towards open or closed. Two remedies
from the anchors, as pure functions the model's `train_step` calls:

- REINFORCE (SkipNet's hybrid stage, the EnergyNet authors' `train_rl.py`):
  each gate's decision is sampled, and its log-probability is weighted by
  the image's own return: minus its cross-entropy and minus alpha times the
  normalised energy of the blocks it ran from that gate on (the reward of
  every skipped block accumulated back through the gates). A leave-one-out
  batch mean is the variance-reducing baseline (unbiased: an image's
  baseline does not contain its own return).
- Batch-shaping (Bejnordi, Blankevoort, Welling, ICLR 2020): each gate's
  probabilities over a batch are pulled towards a Beta prior's distribution,
  so a gate cannot be always on or always off.
"""

import tensorflow as tf

_EPS = 1e-6


def explore(probabilities, exploration):
    """The behaviour policy: `exploration / 2 + (1 - exploration) * p`.

    A saturated gate (p within 1e-4 of 0 or 1) explores nothing; the mixture
    keeps every decision possible while its gradient still reaches `p`.
    """
    exploration = tf.cast(exploration, probabilities.dtype)
    return 0.5 * exploration + (1.0 - exploration) * probabilities


def sample_decisions(probabilities, uniform):
    """Bernoulli(p) decisions from uniform (0, 1) samples: 1 where `uniform > 1 - p`.

    (The same event as the training noise of `gates.straight_through` with
    scale 1, `logit(p) + logistic(u) > 0`, so one uniform stream serves both.)
    """
    return tf.cast(uniform > 1.0 - probabilities, probabilities.dtype)


def log_probability(probabilities, decisions):
    """`(batch, gates)` log-probability of each decision under Bernoulli(p)."""
    p = tf.clip_by_value(probabilities, _EPS, 1.0 - _EPS)
    return decisions * tf.math.log(p) + (1.0 - decisions) * tf.math.log(1.0 - p)


def entropy(probabilities):
    """`(batch, gates)` entropy of each Bernoulli(p) gate, in nats."""
    p = tf.clip_by_value(probabilities, _EPS, 1.0 - _EPS)
    return -(p * tf.math.log(p) + (1.0 - p) * tf.math.log(1.0 - p))


def returns_to_go(cross_entropy, decisions, block_energy, alpha):
    """Each gate's return: what its decision (and every later one) earned for the image.

    `G_ig = -(CE_i + alpha * sum_{g' >= g} m_ig' E_g')`: the image's
    cross-entropy is the final negative reward; each block that runs costs
    its normalised energy, so each skipped block earns it back. Energies
    decided before gate g do not depend on g's decision and are left out
    (the always-run part and the gates' own energy are the same for every
    decision and cancel in the baseline).

    Args:
        cross_entropy: `(batch,)` per-image cross-entropy of the executed path.
        decisions: `(batch, gates)` 0/1 decisions taken.
        block_energy: `(gates,)` each gated block's energy over E_total.
        alpha: the energy weight.

    Returns:
        `(batch, gates)` returns.
    """
    spent = decisions * tf.cast(block_energy, decisions.dtype)[None, :]
    to_go = tf.math.cumsum(spent, axis=1, reverse=True)
    alpha = tf.cast(alpha, decisions.dtype)
    return -(cross_entropy[:, None] + alpha * to_go)


def leave_one_out_advantages(returns):
    """`G_i - mean_{j != i} G_j` per gate over the global batch (0 for a batch of one).

    Unbiased: the baseline of image i does not depend on its own sample.
    Under a `tf.distribute` strategy with several replicas the sums run over
    every replica's images (an all-reduce), so the advantages do not depend
    on how the global batch is split.
    """
    n = tf.cast(tf.shape(returns)[0], returns.dtype)
    total = tf.reduce_sum(returns, axis=0, keepdims=True)
    context = tf.distribute.get_replica_context()
    if context is not None and context.num_replicas_in_sync > 1:
        total = context.all_reduce(tf.distribute.ReduceOp.SUM, total)
        n = context.all_reduce(tf.distribute.ReduceOp.SUM, n)
    others = tf.math.divide_no_nan(total - returns, n - 1.0)
    return tf.where(n > 1.0, returns - others, tf.zeros_like(returns))


def policy_loss(probabilities, decisions, advantages):
    """The REINFORCE surrogate, `-mean_i sum_g A_ig log pi(m_ig)`; its gradient estimates minus the return's.

    `advantages` carry no gradient; the gradient reaches `probabilities` only.
    """
    advantages = tf.stop_gradient(advantages)
    decisions = tf.stop_gradient(decisions)
    return -tf.reduce_mean(tf.reduce_sum(advantages * log_probability(probabilities, decisions), axis=1))


def batch_shaping_loss(probabilities, a, b):
    """Bejnordi et al.'s batch-shaping loss of every gate, summed over gates.

    For each gate, the batch's probabilities are sorted, `x_(1) <= ... <=
    x_(N)`, and `sum_i (F(x_(i); a, b) - i / (N + 1))^2` compares the Beta(a,
    b) CDF with the empirical one. A gate always on or always off puts every
    `x_(i)` at one end, far from the prior's quantiles; a prior with mass at
    both ends (a, b < 1) asks each gate to be on for some images and off for
    others. The gradient reaches the probabilities through the CDF.

    Args:
        probabilities: `(batch, gates)` gate probabilities.
        a, b: the Beta prior's parameters (> 0).

    Returns:
        A scalar.
    """
    p = tf.clip_by_value(probabilities, _EPS, 1.0 - _EPS)
    ordered = tf.sort(p, axis=0)
    n = tf.shape(p)[0]
    empirical = tf.cast(tf.range(1, n + 1), p.dtype) / tf.cast(n + 1, p.dtype)
    cdf = tf.math.betainc(tf.cast(a, p.dtype), tf.cast(b, p.dtype), ordered)
    return tf.reduce_sum(tf.square(cdf - empirical[:, None]))
