from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class PatchOperationType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PATCH_OPERATION_TYPE_UNSPECIFIED: _ClassVar[PatchOperationType]
    PATCH_OPERATION_TYPE_SET: _ClassVar[PatchOperationType]
    PATCH_OPERATION_TYPE_REMOVE: _ClassVar[PatchOperationType]
PATCH_OPERATION_TYPE_UNSPECIFIED: PatchOperationType
PATCH_OPERATION_TYPE_SET: PatchOperationType
PATCH_OPERATION_TYPE_REMOVE: PatchOperationType

class PatchOperation(_message.Message):
    __slots__ = ("op", "path", "value_json")
    OP_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    VALUE_JSON_FIELD_NUMBER: _ClassVar[int]
    op: PatchOperationType
    path: str
    value_json: bytes
    def __init__(self, op: _Optional[_Union[PatchOperationType, str]] = ..., path: _Optional[str] = ..., value_json: _Optional[bytes] = ...) -> None: ...

class PatchOperationList(_message.Message):
    __slots__ = ("operations",)
    OPERATIONS_FIELD_NUMBER: _ClassVar[int]
    operations: _containers.RepeatedCompositeFieldContainer[PatchOperation]
    def __init__(self, operations: _Optional[_Iterable[_Union[PatchOperation, _Mapping]]] = ...) -> None: ...

class StatePatch(_message.Message):
    __slots__ = ("merge_patch_json", "operations")
    MERGE_PATCH_JSON_FIELD_NUMBER: _ClassVar[int]
    OPERATIONS_FIELD_NUMBER: _ClassVar[int]
    merge_patch_json: bytes
    operations: PatchOperationList
    def __init__(self, merge_patch_json: _Optional[bytes] = ..., operations: _Optional[_Union[PatchOperationList, _Mapping]] = ...) -> None: ...
