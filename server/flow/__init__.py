"""Dense optical flow between adjacent 224x224 face crops: TV-L1 (the paper's) or DIS (fast)."""

from server.flow.estimators import FLOW_MODES, FlowEstimator, flow

__all__ = ["FLOW_MODES", "FlowEstimator", "flow"]
