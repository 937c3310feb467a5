"""nitp reports: paper-style tables and figures from runs and result records (`nitp-report`).

>>> from reports import compare
>>> compare(["runs/tiny-ntp", "runs/tiny-nitp"], "out")      # doctest: +SKIP
PosixPath('out/report.md')
"""

from .compare import compare
from .phases import detect_phases

__all__ = ["compare", "detect_phases"]
