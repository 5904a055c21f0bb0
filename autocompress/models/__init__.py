"""Model sources: builtin architectures, torchvision models and user files.

>>> from autocompress.models import create_model, resolve_model
>>> resolve_model("resnet20").fingerprint
'builtin:resnet20:v1'
>>> model = create_model("resnet20", num_classes=10, in_channels=1)

New builtins are registered with :func:`register_model`; importing this package imports the
modules that define the builtins. Student architectures for distillation are typed specs
(:class:`StudentSpec`, one family per class), see :mod:`autocompress.models.students`.
"""

from __future__ import annotations

from autocompress.models import cifar_resnet, mobilenet_v2  # noqa: F401  (fill the registry)
from autocompress.models._loading import (
    ModelSource,
    ModelSpec,
    create_model,
    load_checkpoint,
    resolve_model,
)
from autocompress.models._registry import list_models, register_model
from autocompress.models._zoo import ZOO_MAX_PARAMS, ZOO_MIN_INPUT_PX, ZooModel, torchvision_zoo
from autocompress.models.students import (
    TORCHVISION_STUDENTS,
    CifarResNetStudent,
    MobileNetV2Student,
    StudentSpec,
    TorchvisionStudent,
    get_student_family,
    list_student_families,
    register_student,
    student_from_dict,
)

__all__ = [
    "TORCHVISION_STUDENTS",
    "ZOO_MAX_PARAMS",
    "ZOO_MIN_INPUT_PX",
    "CifarResNetStudent",
    "MobileNetV2Student",
    "ModelSource",
    "ModelSpec",
    "create_model",
    "list_models",
    "load_checkpoint",
    "register_model",
    "StudentSpec",
    "TorchvisionStudent",
    "ZooModel",
    "get_student_family",
    "list_student_families",
    "register_student",
    "resolve_model",
    "student_from_dict",
    "torchvision_zoo",
]
