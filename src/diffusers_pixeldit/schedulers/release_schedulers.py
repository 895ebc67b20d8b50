# Copyright 2026 The diffusers-pixeldit authors. Licensed under the Apache License, Version 2.0.
"""The text-to-image release's sampler as a diffusers scheduler configuration."""

from diffusers import DPMSolverMultistepScheduler


# The PixelDiT-1300M release samples with Sana's DPM-Solver++ (2M, flow): this `DPMSolverMultistepScheduler`
# configuration has the same grid and update (checked against the official outputs in the tests); the flow shift is
# the one setting that varies (4.0 at 1024 px).
T2I_RELEASE_DPM_SOLVER_CONFIG = {
    "use_flow_sigmas": True,
    "prediction_type": "flow_prediction",
    "solver_order": 2,
    "algorithm_type": "dpmsolver++",
    "lower_order_final": True,
}


def release_dpm_solver_scheduler(flow_shift: float = 4.0) -> DPMSolverMultistepScheduler:
    """The text-to-image release's DPM-Solver++ (2M, flow) with the given flow shift."""
    if flow_shift <= 0:
        raise ValueError(f"`flow_shift` must be positive, got {flow_shift}.")
    return DPMSolverMultistepScheduler(**T2I_RELEASE_DPM_SOLVER_CONFIG, flow_shift=flow_shift)
