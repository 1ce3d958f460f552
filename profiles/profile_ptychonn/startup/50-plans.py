"""Plans and helpers at the prompt, and in RE Manager's list of plans.

>>> RE(scan_with_inference(det, inference, sy, -1, 1, 9, sx, -1, 1, 9))  # 9x9 step grid
>>> RE(scan_with_inference(det, inference, sy, -1, 1, 21, sx, -1, 1, 21, mode="fly"))
>>> RE(count([det, inference], num=3))
>>> replay(-1, catalog)  # PNG of the latest run

bluesky-queueserver lists the plans bound to a name here (a plan reached through a
module, ``bp.scan``, is not listed), so the standard plans are imported by name too.
"""

import bluesky.plan_stubs as bps  # noqa: F401
import bluesky.plans as bp  # noqa: F401
from bluesky.plan_stubs import mv, mvr  # noqa: F401
from bluesky.plans import (  # noqa: F401
    count,
    grid_scan,
    list_grid_scan,
    list_scan,
    rel_grid_scan,
    rel_list_scan,
    rel_scan,
    scan,
)

from ptychonn_ophyd.analysis.replay import replay  # noqa: F401
from ptychonn_ophyd.session.plans import scan_with_inference  # noqa: F401
