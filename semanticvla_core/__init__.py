"""SemanticVLA core: everything that computes, with no ROS dependency.

Importable on a training workstation without ROS: models, training stages, data, simulation,
safety checking and the conversions the ROS nodes call.
"""
__version__ = "0.1.0"
