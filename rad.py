"""RAD-s and RAD-m observation scaling, the paper's augmentation baselines (§4.2; Laskin et al. 2020).

RAD multiplies the observation by a uniform random variable z ~ U[alpha, beta],
with alpha = 0.8 and beta = 1.2 as in the paper:

* RAD-s: one scalar z per observation vector (per episode, step and agent);
* RAD-m: one z per observation feature (multi-variate).

It is applied to every learner minibatch, fresh each time, to the agents'
observations — and so to the mixer's state, which is the joint observation.
Zeros (dead agents, padding) stay zero.
"""
import torch

AUGMENTATIONS = ("none", "rad-s", "rad-m")


def rad_factors(obs_shape, mode, generator, low=0.8, high=1.2):
    """The multipliers z for observations of shape (..., O): (..., 1) for rad-s, (..., O) for rad-m."""
    if mode == "rad-s":
        shape = tuple(obs_shape[:-1]) + (1,)
    elif mode == "rad-m":
        shape = tuple(obs_shape)
    else:
        raise ValueError(f"unknown RAD mode {mode!r}; choose rad-s or rad-m")
    return low + (high - low) * torch.rand(shape, generator=generator)


def augment(batch, mode, generator):
    """A minibatch with its observations scaled by RAD (`mode` none: unchanged)."""
    if mode == "none":
        return batch
    return {**batch, "obs": batch["obs"] * rad_factors(batch["obs"].shape, mode, generator)}
