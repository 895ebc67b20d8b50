from .scheduling_pixeldit_flow import PixelDiTFlowScheduler, PixelDiTFlowSchedulerOutput


__all__ = ["PixelDiTFlowScheduler", "PixelDiTFlowSchedulerOutput"]
