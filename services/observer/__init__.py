"""The Observer: anomaly detection over agent metrics and logs, reported to the Hive.

Pure core (`features`, `detectors`, `scoring`, `analysis`) and a thin service (`service`) that
reads SWARM_METRICS / SWARM_LOGS, sends `anomaly.report` commands and stores behaviour vectors.
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
