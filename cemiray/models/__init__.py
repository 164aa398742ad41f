"""Face-recognition models (models): networks, heads, Partial FC, recognisers; torch only.

Face-recognition networks, margin heads, Partial FC, weight files and recognisers (torch only;
no Ray, no DeepSpeed)."""

from cemiray.models.iresnet import IResNet, get_backbone
from cemiray.models.margin_heads import (
    AdaFaceMargin,
    ArcFaceMargin,
    CosFaceMargin,
    MarginSoftmaxHead,
    get_margin,
    get_margin_head,
)
from cemiray.models.partial_fc import PartialFC
from cemiray.models.recognizer import (
    OnnxRecognizer,
    Recognizer,
    TorchRecognizer,
    align_face,
    load_recognizer,
)
from cemiray.models.serialization import (
    CheckpointError,
    UnsafeCheckpointError,
    load_model_folder,
    load_torch_state_dict,
    save_model_folder,
)

__all__ = [
    "AdaFaceMargin",
    "ArcFaceMargin",
    "CheckpointError",
    "CosFaceMargin",
    "IResNet",
    "MarginSoftmaxHead",
    "OnnxRecognizer",
    "PartialFC",
    "Recognizer",
    "TorchRecognizer",
    "UnsafeCheckpointError",
    "align_face",
    "get_backbone",
    "get_margin",
    "get_margin_head",
    "load_model_folder",
    "load_recognizer",
    "load_torch_state_dict",
    "save_model_folder",
]
