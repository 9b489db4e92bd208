"""An inverted path's state at any sigma (comfy_runtime/inversion.py, pure torch): the kept
states at the schedule's sigmas, linear in sigma between them, as multi-evaluation samplers ask."""

import torch

from layerfusion_core.comfy_runtime.inversion import InvertedPath, flipped


def path() -> InvertedPath:
    latents = tuple(torch.full((1, 4, 2, 2), float(v)) for v in (30.0, 20.0, 10.0, 0.0))
    return InvertedPath((14.0, 4.0, 1.0, 0.0), latents)


def test_kept_sigmas_give_the_kept_states_exactly():
    p = path()
    for sigma, latent in zip(p.sigmas, p.latents, strict=True):
        assert p.at(sigma) is latent
    assert p.start is p.latents[0]


def test_between_kept_sigmas_the_state_is_linear_in_sigma():
    p = path()
    assert torch.allclose(p.at(9.0), torch.full((1, 4, 2, 2), 25.0))
    assert torch.allclose(p.at(2.5), torch.full((1, 4, 2, 2), 15.0))
    assert torch.allclose(p.at(0.5), torch.full((1, 4, 2, 2), 5.0))
    assert p.at(20.0) is p.latents[0]  # above the schedule: its first state


def test_a_flipped_schedule_starts_just_above_zero_and_keeps_its_levels():
    assert (
        flipped(torch.tensor([14.6, 3.0, 0.5, 0.0])).tolist() == torch.tensor([1e-4, 0.5, 3.0, 14.6]).tolist()
    )
    assert flipped(torch.tensor([3.0, 1.0])).tolist() == [1.0, 3.0]  # no zero: nothing replaced
