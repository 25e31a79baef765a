"""Is my DPO working? Health checks over what minidpo already measures (docs/health.md).

    checks.py   the live checks: pure functions over the log intervals' reduced metric sums
    monitor.py  HealthMonitor: runs them at each log interval, decides what to print, keeps the record
    data.py     data red flags found when the preference data are loaded
    report.py   a run folder's warnings (summary.json) for eval.md and the app
"""

from minidpo.health.checks import Interval, expected_first_loss, interval_from_sums
from minidpo.health.data import data_red_flags
from minidpo.health.monitor import CHECKS, WARNINGS_KEY, HealthMonitor
from minidpo.health.report import health_markdown, run_health

__all__ = ["CHECKS", "WARNINGS_KEY", "HealthMonitor", "Interval", "data_red_flags", "expected_first_loss",
           "health_markdown", "interval_from_sums", "run_health"]
