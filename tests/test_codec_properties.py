"""Property tests of the wire codecs: whatever arrives, a decoder returns a valid message or
raises :class:`shared.errors.DecodeError` with a documented reason, and nothing else."""

from __future__ import annotations

import json
from typing import Any, Final

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgeplane.shared import codec
from edgeplane.shared.codec import DEFAULT_MAX_PAYLOAD, MessageCodec, check_env, encode
from edgeplane.shared.errors import DecodeError
from edgeplane.shared.ids import ENV_ID_PATTERN
from edgeplane.shared.messages import (
    Alert,
    CommandRejected,
    ControllerStatus,
    EnvView,
    OfflineStatus,
    OnlineStatus,
    Ping,
    Pong,
)

CODECS: Final[dict[str, MessageCodec[Any]]] = {
    "status": codec.STATUS,
    "view": codec.VIEW,
    "alert": codec.ALERT,
    "controller-status": codec.CONTROLLER_STATUS,
    "command": codec.COMMAND,
    "event": codec.EVENT,
}
# The msgspec Structs each topic's decoder may return (tagged unions have several).
STRUCTS: Final[dict[str, tuple[type[msgspec.Struct], ...]]] = {
    "status": (OnlineStatus, OfflineStatus),
    "view": (EnvView,),
    "alert": (Alert,),
    "controller-status": (ControllerStatus,),
    "command": (Ping,),
    "event": (Pong, CommandRejected),
}
REASONS: Final = {"too-large", "empty", "not-json", "schema"}

codec_names = st.sampled_from(sorted(CODECS))

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=300),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4)
    ),
    max_leaves=20,
)


def decode_or_reason(name: str, payload: bytes, limit: int = DEFAULT_MAX_PAYLOAD) -> object:
    """Decode; return the message, or the DecodeError's reason. Anything else propagates."""
    try:
        message = CODECS[name].decode(payload, limit=limit)
    except DecodeError as exc:
        error = exc
    else:
        assert isinstance(message, STRUCTS[name])
        return message
    assert error.reason in REASONS, error
    assert str(error).startswith(error.reason)
    return error.reason


def schema_shaped(struct: type[msgspec.Struct]) -> st.SearchStrategy[dict[str, Any]]:
    """Objects with every field of ``struct`` (and its tag, right or wrong), of any type."""
    info = msgspec.inspect.type_info(struct)
    assert isinstance(info, msgspec.inspect.StructType)
    fields = {field.encode_name: json_values for field in info.fields}
    if info.tag_field is not None:
        fields[info.tag_field] = st.just(info.tag) | json_values
    return st.fixed_dictionaries(fields)


# --- anything at all -------------------------------------------------------------------------
@settings(max_examples=400, deadline=None)
@given(name=codec_names, payload=st.binary(max_size=400))
def test_arbitrary_bytes_raise_only_decode_errors(name: str, payload: bytes) -> None:
    decode_or_reason(name, payload)


@settings(max_examples=400, deadline=None)
@given(name=codec_names, value=json_values)
def test_arbitrary_json_raises_only_decode_errors(name: str, value: Any) -> None:
    result = decode_or_reason(name, json.dumps(value).encode())
    if not isinstance(value, dict):
        assert result == "schema"


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), name=codec_names)
def test_right_keys_with_wrong_types_raise_only_decode_errors(
    data: st.DataObject, name: str
) -> None:
    struct = data.draw(st.sampled_from(STRUCTS[name]))
    value = data.draw(schema_shaped(struct))
    result = decode_or_reason(name, json.dumps(value).encode())
    assert result in ("schema", "not-json") or isinstance(result, STRUCTS[name])


@pytest.mark.parametrize("name", sorted(CODECS))
@pytest.mark.parametrize(
    "payload",
    [
        b"[" * 10_000 + b"]" * 10_000,  # deep nesting
        b'{"a":' * 5_000,
        b"\xef\xbb\xbf{}",  # a byte-order mark
        b"\xff\xfe\x00",
        b'{"env": "\xc3"}',  # invalid UTF-8 inside a string
        b"null",
        b"1e999",
        b'{"status": "online"}',  # a valid controller status, and nothing else
        b'{"type": "ping"}',
        b'{"env": "a", "env": "b"}',
        b"{}" + b" " * 100,
        b"{} {}",
    ],
)
def test_hostile_payloads_raise_only_decode_errors(name: str, payload: bytes) -> None:
    result = decode_or_reason(name, payload)
    assert isinstance(result, msgspec.Struct) or result in REASONS


# --- size and emptiness ---------------------------------------------------------------------
@settings(max_examples=100, deadline=None)
@given(name=codec_names, extra=st.integers(1, 5000), filler=st.binary(min_size=1, max_size=1))
def test_oversized_payloads_are_too_large_before_anything_else(
    name: str, extra: int, filler: bytes
) -> None:
    limit = 100
    assert decode_or_reason(name, filler * (limit + extra), limit=limit) == "too-large"


@pytest.mark.parametrize("name", sorted(CODECS))
def test_the_default_limit_is_64_kib(name: str) -> None:
    assert DEFAULT_MAX_PAYLOAD == 64 * 1024
    huge = b'{"pad": "' + b"x" * DEFAULT_MAX_PAYLOAD + b'"}'
    with pytest.raises(DecodeError, match=r"too-large: \d+ bytes, limit 65536") as caught:
        CODECS[name].decode(huge)
    assert caught.value.reason == "too-large"


def test_a_valid_message_over_the_limit_is_still_refused() -> None:
    payload = encode(EnvView(env="dev-a", status="online", since=1.0))
    assert decode_or_reason("view", payload, limit=len(payload)) != "too-large"
    assert decode_or_reason("view", payload, limit=len(payload) - 1) == "too-large"


@pytest.mark.parametrize("name", sorted(CODECS))
def test_an_empty_payload_is_its_own_reason(name: str) -> None:
    assert decode_or_reason(name, b"") == "empty"


# --- round trips ----------------------------------------------------------------------------
env_ids = st.from_regex(ENV_ID_PATTERN, fullmatch=True)
counts = st.integers(0, 2**53 - 1)
short_text = st.text(max_size=256)
percent = st.floats(0, 100)
seconds = st.floats(0, 86_400, exclude_min=True)
unix_times = st.floats(0, 4e9)
command_ids = st.text(min_size=1, max_size=64)

valid_messages: dict[str, st.SearchStrategy[msgspec.Struct]] = {
    "status": st.one_of(
        st.builds(
            OnlineStatus,
            env=env_ids,
            bdseq=counts,
            seq=counts,
            interval=seconds,
            boot=short_text,
            cpu=st.none() | percent,
            mem=st.none() | percent,
            disk=st.none() | percent,
            ver=short_text,
            up=counts,
        ),
        st.builds(
            OfflineStatus,
            env=env_ids,
            bdseq=counts,
            reason=st.sampled_from(["connection-lost", "shutdown", "retired"]),
        ),
    ),
    "view": st.builds(
        EnvView,
        env=env_ids,
        status=st.sampled_from(["online", "offline", "unknown", "retired"]),
        since=unix_times,
        flapping=st.booleans(),
        reason=short_text,
        last_seen=st.none() | unix_times,
        interval=st.none() | seconds,
    ),
    "alert": st.builds(
        Alert,
        kind=st.sampled_from(["flapping", "identity-conflict"]),
        state=st.sampled_from(["raised", "cleared"]),
        env=env_ids,
        ts=unix_times,
        detail=short_text,
    ),
    "controller-status": st.builds(
        ControllerStatus,
        status=st.sampled_from(["online", "offline"]),
        boot=short_text,
        ver=short_text,
        since=st.none() | unix_times,
    ),
    "command": st.builds(Ping, id=command_ids),
    "event": st.one_of(
        st.builds(Pong, env=env_ids, seq=counts, cmd=command_ids),
        st.builds(CommandRejected, env=env_ids, seq=counts, reason=short_text, cmd=short_text),
    ),
}


@settings(max_examples=300, deadline=None)
@given(data=st.data(), name=codec_names)
def test_valid_messages_round_trip(data: st.DataObject, name: str) -> None:
    message = data.draw(valid_messages[name])
    payload = encode(message)
    assert CODECS[name].encode(message) == payload
    decoded = CODECS[name].decode(payload)
    assert decoded == message
    assert type(decoded) is type(message)


@settings(max_examples=60, deadline=None)
@given(
    message=valid_messages["status"],
    extra=st.dictionaries(st.text(max_size=8), json_values, max_size=4),
)
def test_unknown_fields_are_ignored(message: msgspec.Struct, extra: dict[str, Any]) -> None:
    fields = json.loads(encode(message))
    merged = {**{k: v for k, v in extra.items() if k not in fields}, **fields}
    assert codec.STATUS.decode(json.dumps(merged).encode()) == message


@pytest.mark.parametrize(
    ("name", "payload"),
    [
        ("status", b'{"status":"online","env":"dev-a","bdseq":-1,"seq":0,"interval":5,"boot":"x"}'),
        ("status", b'{"status":"online","env":"dev-a","bdseq":0,"seq":0,"interval":0,"boot":"x"}'),
        ("status", b'{"status":"sleeping","env":"dev-a","bdseq":0}'),
        ("status", b'{"status":"offline","env":"dev-a","bdseq":0,"reason":"bored"}'),
        ("status", b'{"status":"offline","env":"Dev-A","bdseq":0,"reason":"shutdown"}'),
        ("status", b'{"status":"online","env":"dev-a","bdseq":0,"seq":0,"interval":5}'),
        ("view", b'{"env":"dev-a","status":"online","since":-1}'),
        ("view", b'{"env":"dev-a","status":"online","since":"yesterday"}'),
        ("alert", b'{"kind":"flapping","state":"maybe","env":"dev-a","ts":1}'),
        ("controller-status", b'{"status":"asleep"}'),
        ("command", b'{"type":"ping","id":""}'),
        ("event", b'{"type":"pong","env":"dev-a","seq":1.5,"cmd":"c"}'),
    ],
)
def test_well_formed_json_with_bad_values_is_a_schema_error(name: str, payload: bytes) -> None:
    assert decode_or_reason(name, payload) == "schema"


# --- the topic's env ------------------------------------------------------------------------
@given(payload_env=env_ids, topic_env=env_ids)
def test_check_env_refuses_a_payload_for_another_topic(payload_env: str, topic_env: str) -> None:
    if payload_env == topic_env:
        check_env(payload_env, topic_env)
        return
    with pytest.raises(DecodeError) as caught:
        check_env(payload_env, topic_env)
    assert caught.value.reason == "env-mismatch"
    assert repr(payload_env) in caught.value.detail
    assert repr(topic_env) in caught.value.detail


def test_check_env_passes_the_matching_env() -> None:
    status = codec.STATUS.decode(encode(OfflineStatus(env="dev-a", bdseq=3, reason="shutdown")))
    check_env(status.env, "dev-a")
    with pytest.raises(DecodeError, match="env-mismatch: payload env 'dev-a'"):
        check_env(status.env, "dev-b")


@pytest.mark.parametrize(
    ("number", "reason"),
    [(b"1e999", "schema"), (b"-1e999", "schema"), (b"NaN", "not-json"), (b"Infinity", "not-json")],
)
def test_floats_that_are_not_finite_are_never_decoded(number: bytes, reason: str) -> None:
    payload = b'{"env":"dev-a","status":"online","since":' + number + b"}"
    assert decode_or_reason("view", payload) == reason


def test_counters_beyond_what_sqlite_and_javascript_hold_are_schema_errors() -> None:
    payload = (
        b'{"status":"online","env":"a","bdseq":100000000000000000000000,'
        b'"seq":1,"interval":1,"boot":"b"}'
    )
    with pytest.raises(DecodeError) as caught:
        codec.STATUS.decode(payload)
    assert caught.value.reason == "schema"
