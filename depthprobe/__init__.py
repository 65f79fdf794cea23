"""depthprobe: at which layer does a language model hold the state it tracks?"""

__version__ = "0.1.0"

from .depth import Cascade, DepthRule, cascade, resolution_depth  # noqa: E402
from .models import load_model  # noqa: E402
from .run import RunConfig, RunResult, run  # noqa: E402

__all__ = ["Cascade", "DepthRule", "RunConfig", "RunResult", "__version__", "cascade",
           "load_model", "resolution_depth", "run"]
