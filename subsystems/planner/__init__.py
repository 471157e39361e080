"""The deployment planner subsystem: proposes hosts from a capacity index that follows the log."""

from subsystems.planner.follower import LogFollower
from subsystems.planner.index import CapacityIndex
from subsystems.planner.planners import place
from subsystems.planner.plugin import Planner, make_planner

__all__ = ["CapacityIndex", "LogFollower", "Planner", "make_planner", "place"]
