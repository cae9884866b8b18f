"""The contract's shared input shapes (see the package comment of common.proto).

One definition for every servicer, so that an id or a label key valid for one
service is valid for all of them.
"""

from __future__ import annotations

import re

__all__ = ["ID", "KEY"]

# Workflow, task, pool, namespace, agent, model and worker names, request ids.
ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
# Keys of labels and metadata maps.
KEY = re.compile(r"[A-Za-z0-9._:/-]{1,128}")
