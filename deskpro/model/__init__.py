"""The DeSKPro model (CSA global stream, face teacher and student LightMBNs), losses and checkpoints."""

from deskpro.model.deskpro import DeSKPro, freeze_teacher, retrieval_distance, retrieval_features
from deskpro.model.lmbn import LightMBN, LMBNOutput

__all__ = ["DeSKPro", "LightMBN", "LMBNOutput", "freeze_teacher", "retrieval_distance", "retrieval_features"]
