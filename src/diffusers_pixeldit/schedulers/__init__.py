from .release_schedulers import T2I_RELEASE_DPM_SOLVER_CONFIG, release_dpm_solver_scheduler
from .scheduling_pixeldit_flow import PixelDiTFlowScheduler, PixelDiTFlowSchedulerOutput


__all__ = [
    "T2I_RELEASE_DPM_SOLVER_CONFIG",
    "PixelDiTFlowScheduler",
    "PixelDiTFlowSchedulerOutput",
    "release_dpm_solver_scheduler",
]
