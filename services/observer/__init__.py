"""The Observer: anomaly detection over agent metrics and logs, reported to the Hive.

Pure core (`features`, `detectors`, `scoring`, `machine`, `analysis`), a stream app (`stream`:
processors over SWARM_METRICS / SWARM_LOGS on swarm.kernel.streaming that keep the core's state
in tables and return `anomaly.report` commands about agents and `pod.report_anomaly` commands
about machines) and the process around it (`service`, which also stores behaviour vectors).
"""

from services.observer.analysis import Finding, Observation, Observatory
from services.observer.config import ObserverSettings
from services.observer.scoring import DetectorConfig
from services.observer.service import Observer, Status

__all__ = [
    "DetectorConfig",
    "Finding",
    "Observation",
    "Observatory",
    "Observer",
    "ObserverSettings",
    "Status",
]
