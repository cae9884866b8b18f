"""The ARE sidecar daemon: configuration, CLI, server assembly and servicers.

It owns every protobuf type; the engine below it (``are_core``) sees none.
"""

import os as _os

# The cache writes its indexes from forked children that never touch gRPC;
# gRPC's own fork handlers (stopping and restarting its threads around every
# fork) would only cost the parent a pause. Set before grpc is first imported.
_os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")
