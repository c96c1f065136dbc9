"""The Scheduler (Resource Manager): proposes where waiting replicas run; the Hive commits.

`python -m services.scheduler` runs it; `SWARM_SCHEDULER_POLICY` picks the placement policy
(`market`, the default, or the baselines `first-fit` and `most-free`). Its state is the tables of
a `swarm.kernel.streaming` app recovered from their changelog on start (`intake.py`, `tables.py`).
"""

from services.scheduler.catalog import POLICIES, policy_named
from services.scheduler.config import SchedulerSettings
from services.scheduler.market import Book, FirstFit, Market
from services.scheduler.planner import Plan, Planner
from services.scheduler.policies import (
    Choice,
    Cleared,
    MostFreeCapacity,
    Need,
    Offer,
    Policy,
    Pricing,
)
from services.scheduler.preemption import Candidate, Preemption, choose_preemption
from services.scheduler.service import Scheduler, Status
from services.scheduler.view import ClusterView

__all__ = [
    "POLICIES",
    "Book",
    "Candidate",
    "Choice",
    "Cleared",
    "ClusterView",
    "FirstFit",
    "Market",
    "MostFreeCapacity",
    "Need",
    "Offer",
    "Plan",
    "Planner",
    "Policy",
    "Preemption",
    "Pricing",
    "Scheduler",
    "SchedulerSettings",
    "Status",
    "choose_preemption",
    "policy_named",
]
