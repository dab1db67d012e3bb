"""Inference in the library: one pipeline per trained model, from a file (or array) to named volumes.

>>> from voxdiff import load_pipeline
>>> pipe = load_pipeline("pretrained:pet-denoise")            # or a checkpoint / run folder
>>> out = pipe("low_dose.nii.gz", samples=4)                  # path, Volume, (array, affine), MetaTensor
>>> out["output"], out["std"]                                  # Volumes in the input's geometry and units

Every task is served by the same :class:`Pipeline`; what differs (input roles, the start
volume, the schedule, the outputs) is the task's inference contract.
"""

from voxdiff.pipelines.cases import predict_cases
from voxdiff.pipelines.inputs import as_volume
from voxdiff.pipelines.pipeline import Pipeline, PipelineOutput, label_dtype, load_pipeline

__all__ = ["Pipeline", "PipelineOutput", "load_pipeline", "as_volume", "label_dtype", "predict_cases"]
