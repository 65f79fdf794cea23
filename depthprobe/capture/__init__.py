"""Capture of residual-stream vectors through forward hooks."""

from .hooks import ResidualRecorder
from .residuals import PADDING_SIDES, capture_residuals, forward_for_capture, pad_batch

__all__ = ["PADDING_SIDES", "ResidualRecorder", "capture_residuals", "forward_for_capture",
           "pad_batch"]
