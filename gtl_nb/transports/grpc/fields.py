"""The plan that carries every field of every GTL Struct in its protobuf message, and back.

Each msgspec field gets a converter (``converters.py``) chosen from its type (``msgspec.inspect``)
and checked against the protobuf descriptor when it is built, so ``gtl.proto`` and
``protocol/messages.py`` cannot drift apart without a ``SchemaMismatch`` at import:

==============================  ===============================================================
GTL type                        protobuf field
==============================  ===============================================================
``str``/``bool``/``float``      the field of the same name (``string``/``bool``/``double``)
``int``                         ``int64`` of the same name (outside its range: an error)
``Literal[...]``                an enum of the same name; ``"user"`` is ``ROLE_USER`` (the prefix is
                                the name of the enum's value 0 without ``UNSPECIFIED``)
``dict[str, Any]``              ``string <name>_json``: the JSON text of the object
``list[X]``                     ``repeated X`` of the same name
``list[X] | None``              a message of the same name holding one ``repeated X``
a Struct                        a message of the same name
``str | dict[str, Any]``        a ``oneof`` of the same name: the ``*_json`` member for the dict
==============================  ===============================================================

A field that is optional in GTL (nullable, or with a default) has presence in the proto; unset
reads as the GTL default, exactly as an omitted JSON field does. An enum's value 0 also reads as
unset.

Two enums are open (``OPEN_ENUMS``): the spec closes neither a status's states nor the error codes,
so a value this side's enum lacks crosses as text in a string field beside it (``converters.OpenEnum``)
— ``Status.peer_state``, ``Error.peer_code`` (the code then ``INTERNAL``) — and a newer peer's number
this side does not name reads as that text, else as ``INTERNAL`` / its digits: never a refusal.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import msgspec.inspect as mi
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message as ProtoMessage

from gtl_nb.transports.grpc.converters import (
    JSON_SUFFIX,
    MISSING,
    SCALARS,
    ConversionError,
    Converter,
    Enum,
    Json,
    Limits,
    NamedBy,
    Nested,
    OpenEnum,
    Repeated,
    Scalar,
    TextOrObject,
    Wrapped,
    require,
)

OPEN_ENUMS: dict[str, tuple[str, str | None]] = {
    "Status.state": ("peer_state", None),  # a state StatusState lacks: its text, the enum unset
    "Error.code": ("peer_code", "INTERNAL"),  # a code ErrorCode lacks: INTERNAL, the code in peer_code
}
"""``Message.field`` of each open enum: the string field that carries a value the enum lacks, and the enum
value set beside it (``None``: left unset). A value the spec may extend, unlike a role or a finish reason."""


@dataclass(frozen=True)
class FieldPlan:
    """One msgspec field: its name, whether it may be None, whether it must be set, its converter."""

    name: str
    nullable: bool
    required: bool
    converter: Converter


@dataclass
class StructCodec:
    """The converters of every field of one Struct and the proto message that carries it."""

    cls: type
    proto_cls: type[ProtoMessage]
    fields: list[FieldPlan] = field(default_factory=list)


class CodecTable:
    """Every Struct ↔ proto message pair, each with its field plans; ``fill`` and ``read`` recurse through it."""

    def __init__(self, pairs: dict[type, type[ProtoMessage]]) -> None:
        self.by_struct = {cls: StructCodec(cls, proto_cls) for cls, proto_cls in pairs.items()}
        self.by_descriptor = {codec.proto_cls.DESCRIPTOR: codec for codec in self.by_struct.values()}
        for codec in self.by_struct.values():
            for info in mi.type_info(codec.cls).fields:  # type: ignore[union-attr]
                codec.fields.append(self._plan(codec, info))  # (in order: a field's plan may read an earlier one's)

    def descriptor_of(self, cls: type) -> Descriptor | None:
        """The proto descriptor that carries the Struct ``cls`` (None when it has none)."""
        codec = self.by_struct.get(cls)
        return codec.proto_cls.DESCRIPTOR if codec else None

    def _plan(self, codec: StructCodec, info: mi.Field) -> FieldPlan:
        descriptor = codec.proto_cls.DESCRIPTOR
        where = f"{descriptor.name}.{info.name}"
        kind, nullable = _without_none(info.type)
        if isinstance(kind, mi.UnionType):
            members = sorted(type(t).__name__ for t in kind.types)
            require(members == ["DictType", "StrType"] and nullable, where, "the one union rule is str | dict | None")
            return FieldPlan(info.name, nullable, info.required, TextOrObject(descriptor, info.name, where))
        fd = descriptor.fields_by_name.get(info.name + JSON_SUFFIX if _is_object(kind) else info.name)
        require(fd is not None, where, "the proto has no field for it")
        assert fd is not None
        converter = self._converter(fd, kind, nullable, info.required, where)
        for enum_where, (name, _) in OPEN_ENUMS.items():
            if enum_where.startswith(f"{descriptor.name}.") and name == info.name:  # the text of an open enum
                enum = next(plan.converter for plan in codec.fields if f"{descriptor.name}.{plan.name}" == enum_where)
                require(isinstance(converter, Scalar) and isinstance(enum, OpenEnum), where, "names an open enum")
                assert isinstance(converter, Scalar) and isinstance(enum, OpenEnum)
                converter = NamedBy(fd, str, enum, bounds=(converter.least, converter.greatest, converter.longest))
        return FieldPlan(info.name, nullable, info.required, converter)

    def _converter(self, fd: FieldDescriptor, kind: mi.Type, nullable: bool, required: bool, where: str) -> Converter:
        if isinstance(kind, mi.ListType):
            return (Wrapped if nullable else Repeated)(fd, kind.item_type, self, where)
        if isinstance(kind, mi.StructType):
            return Nested(fd, kind.cls, self, where)
        require(fd.has_presence == (nullable or not required), where, "`optional` in the proto iff optional in GTL")
        if _is_object(kind):
            return Json(fd, where)
        if isinstance(kind, mi.LiteralType):
            if where in OPEN_ENUMS:
                name, fallback = OPEN_ENUMS[where]
                text = fd.containing_type.fields_by_name.get(name)
                return OpenEnum(fd, tuple(kind.values), where, name_field=text, fallback=fallback, name=name)
            return Enum(fd, tuple(kind.values), where)
        require(type(kind) in SCALARS, where, f"no rule for {kind}")
        python_type, proto_type = SCALARS[type(kind)]
        require(fd.type == proto_type and not fd.is_repeated, where, f"must be {python_type.__name__}")
        return Scalar(fd, python_type, bounds=_bounds(kind))

    def fill(self, proto: ProtoMessage, value: Any, cls: type, limits: Limits) -> None:
        """Set the fields of ``proto`` from the Struct ``value`` (which must be a ``cls``)."""
        if type(value) is not cls:
            raise ConversionError(f"expected {cls.__name__}, got {type(value).__name__}")
        for plan in self.by_struct[cls].fields:
            item = getattr(value, plan.name)
            try:
                if item is None:
                    if not plan.nullable:
                        raise ConversionError("must not be None")
                    continue
                plan.converter.put(proto, item, limits)
            except ConversionError as exc:
                raise exc.at(plan.name) from None
            except (TypeError, ValueError, OverflowError) as exc:  # the protobuf setters' own refusals
                raise ConversionError(f"{type(exc).__name__}: {exc}").at(plan.name) from None

    def read(self, proto: ProtoMessage, limits: Limits) -> Any:
        """The Struct that ``proto`` carries; unset optional fields take the Struct's defaults."""
        codec = self.by_descriptor[proto.DESCRIPTOR]
        values: dict[str, Any] = {}
        for plan in codec.fields:
            try:
                item = plan.converter.get(proto, limits)
            except ConversionError as exc:
                raise exc.at(plan.name) from None
            if item is not MISSING:
                values[plan.name] = item
            elif plan.required:
                raise ConversionError("is required but not set").at(plan.name)
        try:
            return codec.cls(**values)
        except ValueError as exc:  # a Struct's own rule across its fields (a message's parts and images)
            raise ConversionError(str(exc)) from None


def _bounds(kind: mi.Type) -> tuple[float | None, float | None, int | None]:
    """The constraints a scalar's ``msgspec.Meta`` puts on it that a Struct's constructor does not
    check (decoding does): a number's least and greatest value, a string's longest length."""
    return (
        getattr(kind, "ge", None),
        getattr(kind, "le", None),
        getattr(kind, "max_length", None),
    )


def _without_none(kind: mi.Type) -> tuple[mi.Type, bool]:
    """The type without ``None``, and whether ``None`` was allowed."""
    if not isinstance(kind, mi.UnionType):
        return kind, False
    others = tuple(t for t in kind.types if not isinstance(t, mi.NoneType))
    nullable = len(others) < len(kind.types)
    return (others[0] if len(others) == 1 else mi.UnionType(others)), nullable


def _is_object(kind: mi.Type) -> bool:
    return isinstance(kind, mi.DictType) and isinstance(kind.key_type, mi.StrType)
