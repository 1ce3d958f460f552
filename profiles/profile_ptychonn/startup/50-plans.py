"""Plans and helpers at the prompt.

>>> RE(scan_with_inference(det, inference, sy, -1, 1, 9, sx, -1, 1, 9))  # 9x9 step grid
>>> RE(scan_with_inference(det, inference, sy, -1, 1, 21, sx, -1, 1, 21, mode="fly"))
>>> replay(-1, catalog)  # PNG of the latest run
"""

import bluesky.plan_stubs as bps  # noqa: F401
import bluesky.plans as bp  # noqa: F401

from ptychonn_ophyd.analysis.replay import replay  # noqa: F401
from ptychonn_ophyd.session.plans import scan_with_inference  # noqa: F401
