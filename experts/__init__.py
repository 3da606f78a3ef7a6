"""experts stage of x2dfd: external detectors behind one protocol and a registry (blending/SBI first).

    from x2dfd.experts import available_experts, load_expert, DEFAULT_EXPERTS
    expert = load_expert("blend")          # offline: weights ship in experts/weights/
    expert.score(face_images)              # [ExpertScore(expert="blend", p_fake=...)]

    x2dfd expert train --expert blend --real DIR --out DIR
    x2dfd expert score INPUT... [--expert NAME]

Importing this package does not import torch (the registry stores "module:Class" strings).
"""

from x2dfd.experts.base import (
    DEFAULT_EXPERTS,
    ENTRY_POINT_GROUP,
    Expert,
    available_experts,
    build_expert,
    get_expert_class,
    load_expert,
    register_expert,
    unregister_expert,
)

__all__ = [
    "DEFAULT_EXPERTS",
    "ENTRY_POINT_GROUP",
    "Expert",
    "available_experts",
    "build_expert",
    "get_expert_class",
    "load_expert",
    "register_expert",
    "unregister_expert",
]
