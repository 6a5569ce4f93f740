"""The PyTorch backends: :class:`TorchBackend` drives an ``nn.Module`` or TorchScript module,
``export.ExportedBackend`` a ``torch.export`` program (through its unflattened module).

One module per idea: ``backend`` (the passes), ``hooks`` (the one owner of hook lifetimes),
``eval_state`` (eval mode for the duration of calls), ``tracing`` (layers as the forward pass
calls them), ``outputs`` (which output holds the scores), ``relu`` (guided / deconvnet rules),
``head`` (the CAM head), ``replace`` (Ablation-CAM), ``incremental`` (exact incremental
occlusion), ``randomise`` (the sanity test's re-drawn weights), ``export`` (``.pt2`` programs).
"""

from .backend import TorchBackend
from .eval_state import evaluating

__all__ = ["TorchBackend", "evaluating"]
