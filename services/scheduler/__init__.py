"""The Scheduler (Resource Manager): proposes where waiting replicas run; the Hive commits.

`python -m services.scheduler` runs it; `SWARM_SCHEDULER_POLICY` picks the placement policy.
"""

from services.scheduler.config import SchedulerSettings
from services.scheduler.planner import Plan, Planner
from services.scheduler.policies import POLICIES, Choice, MostFreeCapacity, Need, Offer, Policy
from services.scheduler.service import Scheduler, Status
from services.scheduler.view import ClusterView

__all__ = [
    "POLICIES",
    "Choice",
    "ClusterView",
    "MostFreeCapacity",
    "Need",
    "Offer",
    "Plan",
    "Planner",
    "Policy",
    "Scheduler",
    "SchedulerSettings",
    "Status",
]
