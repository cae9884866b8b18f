"""The ARE sidecar daemon: configuration, CLI, server assembly and servicers.

It owns every protobuf type; the engine below it (``are_core``) sees none.
"""
