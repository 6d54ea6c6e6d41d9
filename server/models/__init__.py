"""The paper's micro-expression networks: motion encoder and latent ODE (dynamic-encoded module), graph layers,
dynamic-guided mesh deformation."""

from .deformation import MeshDeformation
from .dem import DynamicEncodedModule
from .graph import GraphConv, MeshGraph, cotangent_laplacian, normalized_adjacency
from .latent_ode import LatentODEFusion
from .motion_encoder import MotionEncoder

__all__ = [
    "DynamicEncodedModule",
    "GraphConv",
    "LatentODEFusion",
    "MeshDeformation",
    "MeshGraph",
    "MotionEncoder",
    "cotangent_laplacian",
    "normalized_adjacency",
]
