"""Dense optical flow between 224x224 face crops: TV-L1 (the paper's) or DIS (fast) between adjacent crops, and
Farnebäck's for the onset-anchored pairs of the refinement."""

from server.flow.estimators import FLOW_MODES, FlowEstimator, flow

__all__ = ["FLOW_MODES", "FlowEstimator", "flow"]
