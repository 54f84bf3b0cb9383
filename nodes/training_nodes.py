"""Training nodes (background jobs): FP_TrainCrossInit, FP_TrainPersonaMagic, FP_TrainingResult. The code lives in
training_nodes/."""
from ..training_nodes import nodes as _nodes, personamagic_node as _pm_node, register_routes

register_routes()

NODE_CLASS_MAPPINGS = dict(_nodes.NODE_CLASS_MAPPINGS)
NODE_DISPLAY_NAME_MAPPINGS = dict(_nodes.NODE_DISPLAY_NAME_MAPPINGS)
NODE_CLASS_MAPPINGS.update(_pm_node.NODE_CLASS_MAPPINGS)
NODE_DISPLAY_NAME_MAPPINGS.update(_pm_node.NODE_DISPLAY_NAME_MAPPINGS)
