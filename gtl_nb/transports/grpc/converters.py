"""The converters that carry one GTL field in a protobuf message and read it back, and their limits.

``fields.py`` chooses a converter for each msgspec field; each converter checks, when it is built,
that the protobuf field has the shape it needs (a ``SchemaMismatch`` otherwise). ``put`` never gets
``None`` (an unset field is the caller's business); ``get`` returns ``MISSING`` for an unset field.
A value that cannot cross is a ``ConversionError``, whose ``path`` the callers extend on the way out.
Free-form JSON obeys the JSON codec's limits: at most ``max_depth`` nested arrays/objects (the
object itself counting as one) and ``max_json_bytes`` of text, checked before it is parsed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import msgspec
import msgspec.inspect as mi
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message as ProtoMessage

from gtl_nb.protocol.codec import DEFAULT_MAX_DEPTH, DEFAULT_MAX_FRAME_BYTES, nesting_exceeds

MISSING: Any = object()
"""What a converter reads from an unset field: the Struct's default applies."""

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
JSON_SUFFIX = "_json"

SCALARS: dict[type[mi.Type], tuple[type, int]] = {
    mi.StrType: (str, FieldDescriptor.TYPE_STRING),
    mi.BoolType: (bool, FieldDescriptor.TYPE_BOOL),
    mi.FloatType: (float, FieldDescriptor.TYPE_DOUBLE),
    mi.IntType: (int, FieldDescriptor.TYPE_INT64),
}


@dataclass(frozen=True)
class Limits:
    """The limits on free-form JSON fields, the JSON codec's defaults unless given."""

    max_depth: int = DEFAULT_MAX_DEPTH
    max_json_bytes: int = DEFAULT_MAX_FRAME_BYTES


class ConversionError(Exception):
    """A value that cannot cross between the two forms; ``path`` says where, outermost first."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason
        self.path: list[str] = []

    def at(self, segment: str) -> ConversionError:
        """Prefix the path with ``segment`` (a field name or a list index) and return self."""
        self.path.insert(0, segment)
        return self


class SchemaMismatch(TypeError):
    """``gtl.proto`` does not carry a GTL field the way the table in ``fields.py`` says it must."""


def require(condition: bool, where: str, what: str) -> None:
    """Raise ``SchemaMismatch`` naming ``where`` (``Message.field``) unless ``condition`` holds."""
    if not condition:
        raise SchemaMismatch(f"gtl.proto and protocol/messages.py disagree at {where}: {what}")


class StructCodecs(Protocol):
    """What converters of nested Structs recurse through (``fields.CodecTable``)."""

    def descriptor_of(self, cls: type) -> Descriptor | None: ...

    def fill(self, proto: ProtoMessage, value: Any, cls: type, limits: Limits) -> None: ...

    def read(self, proto: ProtoMessage, limits: Limits) -> Any: ...


class Converter:
    """Puts one GTL field's value into a proto message and reads it back (``MISSING`` when unset)."""

    proto_fields: tuple[str, ...] = ()

    def put(self, proto: ProtoMessage, value: Any, limits: Limits) -> None:
        """Set the field(s) of ``proto`` that carry ``value`` (never ``None``)."""
        raise NotImplementedError

    def get(self, proto: ProtoMessage, limits: Limits) -> Any:
        """The value ``proto`` carries, or ``MISSING`` when its field is unset."""
        raise NotImplementedError


class Scalar(Converter):
    """``str``, ``bool``, ``float`` or ``int`` in the proto field of the same name."""

    def __init__(
        self,
        fd: FieldDescriptor,
        kind: type,
        *,
        bounds: tuple[float | None, float | None, int | None] = (None, None, None),
    ) -> None:
        self.name, self.kind, self.presence = fd.name, kind, fd.has_presence
        self.proto_fields = (fd.name,)
        self.least, self.greatest, self.longest = bounds  # the field's own limits (its msgspec.Meta)

    def put(self, proto: ProtoMessage, value: Any, limits: Limits) -> None:
        setattr(proto, self.name, check_scalar(value, self.kind))

    def get(self, proto: ProtoMessage, limits: Limits) -> Any:
        if self.presence and not proto.HasField(self.name):
            return MISSING
        value = getattr(proto, self.name)
        # what decoding a JSON frame checks, and a Struct's constructor does not
        if self.least is not None and not value >= self.least:  # (NaN is refused too)
            raise ConversionError(f"must be at least {self.least:g}, not {value!r}")
        if self.greatest is not None and not value <= self.greatest:
            raise ConversionError(f"must be at most {self.greatest:g}, not {value!r}")
        if self.longest is not None and len(value) > self.longest:
            raise ConversionError(f"is longer than {self.longest} characters")
        return value


def check_scalar(value: Any, kind: type) -> Any:
    """``value`` as the protobuf setter of a ``kind`` field needs it, or a ``ConversionError``."""
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        try:
            return float(value)
        except OverflowError:
            raise ConversionError("an integer too large for a double") from None
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ConversionError(f"expected {kind.__name__}, got {type(value).__name__}")
    if kind is int and not INT64_MIN <= value <= INT64_MAX:
        raise ConversionError("an integer outside the int64 range")
    if kind is str and not (value.isascii() or _is_utf8(value)):
        raise ConversionError("a lone surrogate, which UTF-8 cannot carry")
    return value


def _is_utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


class Enum(Converter):
    """A ``Literal`` of strings in an enum field: ``"tool_calls"`` is ``FINISH_REASON_TOOL_CALLS``."""

    def __init__(self, fd: FieldDescriptor, values: tuple[str, ...], where: str) -> None:
        require(fd.type == FieldDescriptor.TYPE_ENUM, where, "a Literal needs an enum field")
        enum = fd.enum_type
        zero = enum.values_by_number.get(0)
        require(zero is not None and zero.name.endswith("_UNSPECIFIED"), where, "value 0 must be *_UNSPECIFIED")
        prefix = zero.name.removesuffix("UNSPECIFIED")
        self.numbers = {
            value: enum.values_by_name[prefix + value.upper()].number
            for value in values
            if prefix + value.upper() in enum.values_by_name
        }
        require(len(self.numbers) == len(values), where, f"{enum.name} lacks {set(values) - set(self.numbers)}")
        self.values = {number: value for value, number in self.numbers.items()}
        require(len(enum.values) == len(values) + 1, where, f"{enum.name} has values GTL does not")
        self.name, self.enum, self.presence = fd.name, enum.name, fd.has_presence
        self.proto_fields = (fd.name,)

    def put(self, proto: ProtoMessage, value: Any, limits: Limits) -> None:
        number = self.numbers.get(value) if isinstance(value, str) else None
        if number is None:
            raise ConversionError(f"not one of the {self.enum} values")
        setattr(proto, self.name, number)

    def get(self, proto: ProtoMessage, limits: Limits) -> Any:
        if self.presence and not proto.HasField(self.name):
            return MISSING
        number = getattr(proto, self.name)
        if number == 0:
            return MISSING
        value = self.values.get(number)
        if value is None:
            raise ConversionError(f"unknown {self.enum} value {number}")
        return value


class OpenEnum(Enum):
    """An enum whose GTL values are open — the spec closes neither a status's states nor the error codes,
    and a newer peer may send one this side's ``gtl.proto`` has no number for — in both directions.

    A value the enum lacks goes as its text in the string field ``name_field``, the enum itself left unset
    (a status: ``Status.peer_state``) or set to ``fallback`` (an error: ``INTERNAL``, the code kept in
    ``Error.peer_code``, as the JSON codec reads an unknown code). Reading, a number this side names wins;
    else the text in ``name_field``; else — a newer peer's number with no text beside it — ``fallback``,
    or the number's digits (``"6"``): never a refusal. The peer's ``Error.peer_code`` reads as those
    digits when it is unset (``NamedBy``)."""

    def __init__(
        self,
        fd: FieldDescriptor,
        values: tuple[str, ...],
        where: str,
        *,
        name_field: FieldDescriptor | None,
        fallback: str | None = None,
        name: str = "",
    ) -> None:
        super().__init__(fd, values, where)
        require(name_field is not None, where, f"the proto has no field {name} for the values {self.enum} lacks")
        assert name_field is not None
        require(
            name_field.type == FieldDescriptor.TYPE_STRING and name_field.has_presence and not name_field.is_repeated,
            where,
            f"{name_field.name} must be an optional string",
        )
        require(fallback is None or fallback in self.numbers, where, f"{fallback!r} is not one of its values")
        self.name_field = name_field.name
        self.fallback = fallback
        if fallback is None:  # the text field carries this field alone (with a fallback, a GTL field of its own)
            self.proto_fields = (fd.name, name_field.name)

    def put(self, proto: ProtoMessage, value: Any, limits: Limits) -> None:
        number = self.numbers.get(value) if isinstance(value, str) else None
        if number is not None:
            setattr(proto, self.name, number)
            return
        text = check_scalar(value, str)
        if self.fallback is not None:
            setattr(proto, self.name, self.numbers[self.fallback])
        setattr(proto, self.name_field, text)

    def get(self, proto: ProtoMessage, limits: Limits) -> Any:
        number = getattr(proto, self.name)
        value = self.values.get(number)
        if value is not None:
            return value
        named = proto.HasField(self.name_field)
        if number == 0 and not named:
            return MISSING
        if self.fallback is not None:
            return self.fallback
        return getattr(proto, self.name_field) if named else str(number)

    def unnamed(self, proto: ProtoMessage) -> str | None:
        """The digits of a number this side's enum does not name (``None`` for a named one, or 0)."""
        number = getattr(proto, self.name)
        return str(number) if number and number not in self.values else None


class NamedBy(Scalar):
    """The string field that names an ``OpenEnum``'s value this side lacks (``Error.peer_code``): as a
    ``Scalar``, and when unset while the enum holds a number this side does not name, that number's digits."""

    def __init__(self, fd: FieldDescriptor, kind: type, enum: OpenEnum, **kwargs: Any) -> None:
        super().__init__(fd, kind, **kwargs)
        self.enum = enum

    def get(self, proto: ProtoMessage, limits: Limits) -> Any:
        value = super().get(proto, limits)
        if value is MISSING:
            digits = self.enum.unnamed(proto)
            return MISSING if digits is None else digits
        return value


class Json(Converter):
    """A free-form ``dict[str, Any]`` as the JSON text of an object in ``<name>_json``."""

    def __init__(self, fd: FieldDescriptor, where: str) -> None:
        require(fd.type == FieldDescriptor.TYPE_STRING and not fd.is_repeated, where, "JSON goes in a string")
        self.name, self.presence = fd.name, fd.has_presence
        self.proto_fields = (fd.name,)

    def put(self, proto: ProtoMessage, value: Any, limits: Limits) -> None:
        setattr(proto, self.name, dump_object(value, limits))

    def get(self, proto: ProtoMessage, limits: Limits) -> Any:
        if self.presence and not proto.HasField(self.name):
            return MISSING
        return load_object(getattr(proto, self.name), limits)


def dump_object(value: Any, limits: Limits) -> str:
    """The JSON text of the object ``value``, within ``limits``."""
    if not isinstance(value, dict):
        raise ConversionError(f"expected a JSON object (dict), got {type(value).__name__}")
    try:
        data = msgspec.json.encode(value)
    except (msgspec.EncodeError, TypeError, ValueError, OverflowError, RecursionError) as exc:
        reason = "nested too deeply" if isinstance(exc, RecursionError) else f"{type(exc).__name__}: {exc}"
        raise ConversionError(f"not representable as JSON ({reason})") from None
    _check_limits(data, limits)
    return data.decode("utf-8")


def load_object(text: str, limits: Limits) -> dict[str, Any]:
    """The object whose JSON text is ``text``, refused beyond ``limits`` before it is parsed."""
    if len(text) > limits.max_json_bytes:  # a str never has more characters than UTF-8 bytes
        raise ConversionError(f"JSON text larger than {limits.max_json_bytes} bytes")
    data = text.encode("utf-8")
    _check_limits(data, limits)
    try:
        return msgspec.json.decode(data, type=dict[str, Any])
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise ConversionError(f"not the JSON text of an object ({exc})") from None


def _check_limits(data: bytes, limits: Limits) -> None:
    if len(data) > limits.max_json_bytes:
        raise ConversionError(f"JSON text larger than {limits.max_json_bytes} bytes")
    if nesting_exceeds(data, limits.max_depth):
        raise ConversionError(f"JSON nested deeper than {limits.max_depth}")


class Repeated(Converter):
    """``list[str]`` or ``list[Struct]`` in the repeated field of the same name."""

    def __init__(self, fd: FieldDescriptor, item: mi.Type, codecs: StructCodecs, where: str) -> None:
        require(fd.is_repeated, where, "a list needs a repeated field")
        self.name, self.codecs = fd.name, codecs
        self.proto_fields = (fd.name,)
        self.item_cls: type | None = None
        self.kind: type = str
        if isinstance(item, mi.StructType):
            self.item_cls = item.cls
            require(fd.message_type is codecs.descriptor_of(item.cls), where, f"items must be {item.cls.__name__}")
        else:
            require(type(item) in SCALARS, where, f"unsupported list item {item}")
            self.kind, proto_type = SCALARS[type(item)]
            require(fd.type == proto_type, where, f"items must be {self.kind.__name__}")

    def put(self, proto: ProtoMessage, value: Any, limits: Limits) -> None:
        if not isinstance(value, (list, tuple)):
            raise ConversionError(f"expected a list, got {type(value).__name__}")
        container = getattr(proto, self.name)
        for index, item in enumerate(value):
            try:
                if self.item_cls is None:
                    container.append(check_scalar(item, self.kind))
                else:
                    self.codecs.fill(container.add(), item, self.item_cls, limits)
            except ConversionError as exc:
                raise exc.at(f"[{index}]") from None

    def get(self, proto: ProtoMessage, limits: Limits) -> Any:
        container = getattr(proto, self.name)
        if self.item_cls is None:
            return list(container)
        out = []
        for index, item in enumerate(container):
            try:
                out.append(self.codecs.read(item, limits))
            except ConversionError as exc:
                raise exc.at(f"[{index}]") from None
        return out


class Wrapped(Converter):
    """``list[X] | None`` in a message field whose message holds one repeated field: null differs from []."""

    def __init__(self, fd: FieldDescriptor, item: mi.Type, codecs: StructCodecs, where: str) -> None:
        require(fd.type == FieldDescriptor.TYPE_MESSAGE and not fd.is_repeated, where, "a nullable list is a message")
        inner = fd.message_type.fields
        require(len(inner) == 1, where, f"{fd.message_type.name} must hold exactly one repeated field")
        self.name, self.items = fd.name, Repeated(inner[0], item, codecs, where)
        self.proto_fields = (fd.name,)

    def put(self, proto: ProtoMessage, value: Any, limits: Limits) -> None:
        wrapper = getattr(proto, self.name)
        wrapper.SetInParent()
        self.items.put(wrapper, value, limits)

    def get(self, proto: ProtoMessage, limits: Limits) -> Any:
        if not proto.HasField(self.name):
            return MISSING
        return self.items.get(getattr(proto, self.name), limits)


class Nested(Converter):
    """A Struct in the message field of the same name."""

    def __init__(self, fd: FieldDescriptor, cls: type, codecs: StructCodecs, where: str) -> None:
        require(fd.message_type is codecs.descriptor_of(cls), where, f"must be the message of {cls.__name__}")
        self.name, self.cls, self.codecs = fd.name, cls, codecs
        self.proto_fields = (fd.name,)

    def put(self, proto: ProtoMessage, value: Any, limits: Limits) -> None:
        message = getattr(proto, self.name)
        message.SetInParent()
        self.codecs.fill(message, value, self.cls, limits)

    def get(self, proto: ProtoMessage, limits: Limits) -> Any:
        if not proto.HasField(self.name):
            return MISSING
        return self.codecs.read(getattr(proto, self.name), limits)


class TextOrObject(Converter):
    """``str | dict[str, Any]`` as a oneof of the same name: a string member and a ``*_json`` one."""

    def __init__(self, descriptor: Descriptor, name: str, where: str) -> None:
        oneof = descriptor.oneofs_by_name.get(name)
        require(oneof is not None and len(oneof.fields) == 2, where, f"needs a oneof {name} of two fields")
        json_fd = [fd for fd in oneof.fields if fd.name.endswith(JSON_SUFFIX)]
        text_fd = [fd for fd in oneof.fields if not fd.name.endswith(JSON_SUFFIX)]
        require(len(json_fd) == 1 and len(text_fd) == 1, where, "one *_json member and one string member")
        require(text_fd[0].type == FieldDescriptor.TYPE_STRING, where, f"{text_fd[0].name} must be a string")
        self.name, self.text, self.json = name, Scalar(text_fd[0], str), Json(json_fd[0], where)
        self.proto_fields = (text_fd[0].name, json_fd[0].name)

    def put(self, proto: ProtoMessage, value: Any, limits: Limits) -> None:
        (self.text if isinstance(value, str) else self.json).put(proto, value, limits)

    def get(self, proto: ProtoMessage, limits: Limits) -> Any:
        member = proto.WhichOneof(self.name)
        if member is None:
            return MISSING
        return self.text.get(proto, limits) if member == self.text.name else self.json.get(proto, limits)
