"""Training nodes (background jobs): FP_TrainCrossInit, FP_TrainPersonaMagic, FP_TrainPIDiff, FP_TrainWPlusAdapter,
FP_TrainingResult. The code lives in training_nodes/."""
from ..training_nodes import nodes as _nodes, personamagic_node as _pm_node, pidiff_wplus_nodes as _residual, register_routes

register_routes()

NODE_CLASS_MAPPINGS = dict(_nodes.NODE_CLASS_MAPPINGS, **_residual.NODE_CLASS_MAPPINGS, **_pm_node.NODE_CLASS_MAPPINGS)
NODE_DISPLAY_NAME_MAPPINGS = dict(_nodes.NODE_DISPLAY_NAME_MAPPINGS, **_residual.NODE_DISPLAY_NAME_MAPPINGS,
                                  **_pm_node.NODE_DISPLAY_NAME_MAPPINGS)
