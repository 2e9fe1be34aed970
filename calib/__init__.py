"""INT8 calibration for TensorRT engines (``sparsifiner.calib``).

Planned: a calibrator that takes any iterable of ``{input_name: array}`` plus a cache
path (Polygraphy's model). Nothing here is implemented yet; no command uses it.
"""
from sparsifiner._namespace import require_namespace

require_namespace(__name__, "sparsifiner.calib")

