"""docs/asyncapi.yaml (and the examples of docs/protocol.md) checked against the code.

The document must parse as AsyncAPI 3, name every topic the code builds, carry payload
schemas that are exactly what msgspec makes of the Structs in shared/messages.py,
shared/rpc.py and shared/workflow.py, and hold only examples that the project's own decoders
accept. A new topic builder, a new Struct or a changed field without the matching change to
the document fails here. Two differences are by design: the document's tagged unions carry
no ``discriminator`` (msgspec writes OpenAPI's object, which is not AsyncAPI), and
``Reply.result``, raw JSON in the code, is the union of ``rpc.RESULT_TYPES``. The official
validator (``make asyncapi``) checks the rest of what AsyncAPI 3 requires.
"""

from __future__ import annotations

import functools
import inspect
import json
import math
import re
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

import msgspec
import pytest
import yaml

from edgeplane import shared
from edgeplane.controller.core.operations import new_id
from edgeplane.controller.daemon.settings import CONTROLLER_SETTINGS
from edgeplane.edge_agent.heartbeat import message_expiry
from edgeplane.shared import codec, messages, rpc, workflow
from edgeplane.shared.broker_url import DEFAULT_BROKER
from edgeplane.shared.errors import DecodeError
from edgeplane.shared.ids import ENV_ID_PATTERN, is_env_id
from edgeplane.shared.topics import DEFAULT_ROOT, TopicKind, TopicRoot

DOCS: Final = Path(__file__).resolve().parent.parent / "docs"
ASYNCAPI: Final = DOCS / "asyncapi.yaml"
PROTOCOL: Final = DOCS / "protocol.md"

SAMPLE_ENV: Final = "prod-hamburg-vision"
SAMPLE_CLIENT: Final = "edgeplane-cli-5e0c1a9b3f21"
SAMPLE_KIND: Final = "flapping"
SAMPLES: Final = {"env": SAMPLE_ENV, "client": SAMPLE_CLIENT, "kind": SAMPLE_KIND}
ROOTS: Final = (TopicRoot(), TopicRoot("site-7/edgeplane/v1"))

# The contract's table: every topic is QoS 1; these are retained.
RETAINED: Final = {
    TopicKind.STATUS: True,
    TopicKind.EVENTS: False,
    TopicKind.CMD: False,
    TopicKind.CONTROLLER_STATUS: True,
    TopicKind.VIEW: True,
    TopicKind.ALERTS: False,
    TopicKind.ALERT_STATE: True,
    TopicKind.REQUEST: False,
    TopicKind.REPLY: False,
}

# The decoder a reader of each topic uses.
CODECS: Final[dict[TopicKind, codec.MessageCodec[Any]]] = {
    TopicKind.STATUS: codec.STATUS,
    TopicKind.EVENTS: codec.EVENT,
    TopicKind.CMD: codec.SIGNED_COMMAND,
    TopicKind.CONTROLLER_STATUS: codec.CONTROLLER_STATUS,
    TopicKind.VIEW: codec.VIEW,
    TopicKind.ALERTS: codec.ALERT,
    TopicKind.ALERT_STATE: codec.ALERT,
    TopicKind.REQUEST: rpc.REQUEST,
    TopicKind.REPLY: rpc.REPLY,
}

# The messages each topic carries: the members of its union, or its one Struct.
TOPIC_MESSAGES: Final[dict[TopicKind, Any]] = {
    TopicKind.STATUS: messages.AgentStatus,
    TopicKind.EVENTS: messages.Event,
    TopicKind.CMD: messages.SignedCommand,
    TopicKind.CONTROLLER_STATUS: messages.ControllerStatus,
    TopicKind.VIEW: messages.EnvView,
    TopicKind.ALERTS: messages.Alert,
    TopicKind.ALERT_STATE: messages.Alert,
    TopicKind.REQUEST: rpc.Request,
    TopicKind.REPLY: rpc.Reply,
}
WIRE_MODULES: Final = (messages, rpc, workflow)

# The zero-length retained payload that deletes a topic's retained message, and the topics
# that carry it: a retiring agent's status (edge_agent.agent) and a retired environment's
# view (controller.core.operations); test_agent_commands_e2e.py and test_controller_deploy.py
# see them on the wire. It is no Struct: decoders report it as "empty".
CLEARED: Final = "Cleared"
CLEARED_KINDS: Final = {TopicKind.STATUS, TopicKind.VIEW, TopicKind.ALERT_STATE}

# Fields of the AsyncAPI MQTT bindings, version 0.2.0 (asyncapi/bindings, mqtt/README.md).
MQTT_BINDING_FIELDS: Final = {
    "server": {
        "clientId",
        "cleanSession",
        "lastWill",
        "keepAlive",
        "sessionExpiryInterval",
        "maximumPacketSize",
        "bindingVersion",
    },
    "channel": set(),
    "operation": {"qos", "retain", "messageExpiryInterval", "bindingVersion"},
    "message": {
        "payloadFormatIndicator",
        "correlationData",
        "contentType",
        "responseTopic",
        "bindingVersion",
    },
}
LAST_WILL_FIELDS: Final = {"topic", "qos", "message", "retain"}

# Fixed fields of AsyncAPI 3.0.0 objects this document uses (extensions `x-*` aside).
TOP_LEVEL_FIELDS: Final = {
    "asyncapi",
    "id",
    "info",
    "servers",
    "defaultContentType",
    "channels",
    "operations",
    "components",
}
OPERATION_FIELDS: Final = {
    "action",
    "channel",
    "title",
    "summary",
    "description",
    "security",
    "tags",
    "externalDocs",
    "bindings",
    "traits",
    "messages",
    "reply",
}
CHANNEL_FIELDS: Final = {
    "address",
    "messages",
    "title",
    "summary",
    "description",
    "servers",
    "parameters",
    "tags",
    "externalDocs",
    "bindings",
}
PARAMETER_FIELDS: Final = {"enum", "default", "description", "examples", "location"}

PLACEHOLDER: Final = re.compile(r"\{([^{}]+)\}")
# A command (c-) or deployment (d-) id as the controller makes them, and what looks like one.
REAL_ID: Final = re.compile(r"[cd]-[0-9a-f]{10}")
LOOKS_LIKE_ID: Final = re.compile(r"[cd]-[0-9a-f]+")


# --- helpers --------------------------------------------------------------------------------
@functools.cache
def load_document() -> dict[str, Any]:
    loaded = yaml.safe_load(ASYNCAPI.read_text(encoding="utf-8"))
    assert isinstance(loaded, dict), f"{ASYNCAPI} is not a YAML mapping"
    return loaded


@pytest.fixture
def doc() -> dict[str, Any]:
    return load_document()


def resolve(document: dict[str, Any], node: Any) -> Any:
    """Follow local ``$ref`` pointers until a node that is not a reference."""
    seen: set[str] = set()
    while isinstance(node, dict) and "$ref" in node:
        ref = node["$ref"]
        assert isinstance(ref, str), f"$ref must be a string, got {ref!r}"
        assert ref.startswith("#/"), f"only local references are used, got {ref!r}"
        assert ref not in seen, f"reference cycle through {ref!r}"
        seen.add(ref)
        node = document
        for part in ref[2:].split("/"):
            key = part.replace("~1", "/").replace("~0", "~")
            assert isinstance(node, dict), f"{ref!r} does not resolve"
            assert key in node, f"{ref!r} does not resolve: no {key!r}"
            node = node[key]
    return node


def address_of(document: dict[str, Any], channel: str, root: TopicRoot) -> str:
    """The channel's address with ``{root}``, ``{env}`` and ``{client}`` substituted."""
    address = document["channels"][channel]["address"]
    assert isinstance(address, str)
    values = {"root": root.value, **SAMPLES}
    return PLACEHOLDER.sub(lambda match: values[match.group(1)], address)


def kind_of(document: dict[str, Any], channel: str) -> TopicKind:
    return TopicRoot().parse(address_of(document, channel, TopicRoot())).kind


def topic_methods() -> tuple[dict[str, str], dict[str, str]]:
    """Every public topic method of TopicRoot and what it makes for the SAMPLES (by the
    name of each parameter), split into builders (a topic) and subscription filters (a
    wildcard in it)."""
    root = TopicRoot()
    builders: dict[str, str] = {}
    filters: dict[str, str] = {}
    for name, function in inspect.getmembers(TopicRoot, inspect.isfunction):
        if name.startswith("_") or name == "parse":
            continue
        parameters = list(inspect.signature(function).parameters)[1:]
        topic = function(root, *[SAMPLES[name] for name in parameters])
        assert isinstance(topic, str), f"TopicRoot.{name} returned {topic!r}"
        is_filter = "+" in topic or "#" in topic
        (filters if is_filter else builders)[name] = topic
    return builders, filters


def topic_matches(topic_filter: str, topic: str) -> bool:
    """MQTT topic-filter matching, for the filters above."""
    wanted, levels = topic_filter.split("/"), topic.split("/")
    for index, level in enumerate(wanted):
        if level == "#":
            return True
        if index >= len(levels) or level not in ("+", levels[index]):
            return False
    return len(wanted) == len(levels)


def exported_structs() -> dict[str, type[msgspec.Struct]]:
    """Every Struct that the wire modules export, by class name (aliases folded)."""
    found: dict[str, type[msgspec.Struct]] = {}
    for module in WIRE_MODULES:
        for name in module.__all__:
            value = getattr(module, name)
            if inspect.isclass(value) and issubclass(value, msgspec.Struct):
                found[value.__name__] = value
    return found


def wire_structs() -> dict[str, type[msgspec.Struct]]:
    """The Structs that travel as a whole message on some topic, by class name."""
    found: dict[str, type[msgspec.Struct]] = {}
    for carried in TOPIC_MESSAGES.values():
        for struct in typing.get_args(carried) or (carried,):
            found[struct.__name__] = struct
    return found


def part_structs() -> dict[str, type[msgspec.Struct]]:
    """The exported Structs that travel only inside messages (a workflow, a preflight
    check, a reply's result ...)."""
    wire = wire_structs()
    return {name: struct for name, struct in exported_structs().items() if name not in wire}


def normalized(document: dict[str, Any], node: Any) -> Any:
    """A schema with references inlined, prose dropped and enums in a stable order."""
    node = resolve(document, node)
    if isinstance(node, list):
        return [normalized(document, item) for item in node]
    if not isinstance(node, dict):
        return node
    result: dict[str, Any] = {}
    for key, value in node.items():
        if key in ("title", "description", "examples") or key.startswith("x-"):
            continue
        if key in ("enum", "required"):
            result[key] = sorted(value, key=repr)
        elif key == "default":
            result[key] = value
        elif key == "properties":  # field names, whatever they are called
            result[key] = {name: normalized(document, schema) for name, schema in value.items()}
        elif key == "discriminator":  # msgspec's; says only what the members' tags say
            check_discriminator(document, node, value)
        else:
            result[key] = normalized(document, value)
    return result


def check_discriminator(document: dict[str, Any], union: dict[str, Any], value: Any) -> None:
    """An OpenAPI ``discriminator`` (msgspec marks a tagged union with one) must say what
    the union's members say: each member requires the tag field and fixes its one tag."""
    assert isinstance(value, dict), f"not an OpenAPI discriminator: {value!r}"
    field = value["propertyName"]
    tags: dict[str, str] = {}
    for member in union["anyOf"]:
        schema = resolve(document, member)
        assert field in schema["required"], f"{member['$ref']} does not require {field!r}"
        (tag,) = schema["properties"][field]["enum"]
        tags[tag] = member["$ref"]
    assert value["mapping"] == tags, "the discriminator's mapping differs from the members' tags"


def discriminators(node: Any, path: str = "#") -> list[str]:
    """Where a schema in ``node`` carries a ``discriminator`` (property names aside)."""
    found: list[str] = []
    if isinstance(node, list):
        for index, item in enumerate(node):
            found += discriminators(item, f"{path}/{index}")
    elif isinstance(node, dict):
        for key, value in node.items():
            if key == "discriminator":
                found.append(path)
            elif key == "properties" and isinstance(value, dict):
                for name, schema in value.items():
                    found += discriminators(schema, f"{path}/properties/{name}")
            else:
                found += discriminators(value, f"{path}/{key}")
    return found


def schema_ready(struct: type[msgspec.Struct]) -> type[msgspec.Struct]:
    """``struct`` itself, or for a Struct with a ``msgspec.Raw`` field (which msgspec cannot
    put into a schema) a copy whose Raw fields are any JSON value with the decoded default."""
    fields = msgspec.structs.fields(struct)
    if not any(field.type is msgspec.Raw for field in fields):
        return struct
    info = msgspec.inspect.type_info(struct)
    assert isinstance(info, msgspec.inspect.StructType)
    copied: list[tuple[str, Any] | tuple[str, Any, Any]] = []
    for field in fields:
        assert field.name == field.encode_name, "renamed fields are not handled here"
        kind: Any = Any if field.type is msgspec.Raw else field.type
        if isinstance(field.default, msgspec.Raw):
            copied.append((field.name, kind, msgspec.json.decode(field.default)))
        elif field.default_factory is not msgspec.NODEFAULT:
            copied.append((field.name, kind, msgspec.field(default_factory=field.default_factory)))
        elif field.default is not msgspec.NODEFAULT:
            copied.append((field.name, kind, field.default))
        else:
            copied.append((field.name, kind))
    return msgspec.defstruct(
        struct.__name__, copied, kw_only=True, tag_field=info.tag_field, tag=info.tag
    )


def result_types() -> list[Any]:
    """The types a ``Reply.result`` holds: each request's (``rpc.RESULT_TYPES``, once each),
    then None (a failed reply)."""
    distinct: list[Any] = []
    for result in rpc.RESULT_TYPES.values():
        if result not in distinct:
            distinct.append(result)
    return [*distinct, None]


def generated_schema(struct: Any) -> dict[str, Any]:
    """What msgspec makes of a Struct (or any type), as a standalone schema. The raw
    ``Reply.result`` becomes the union of the results, since msgspec cannot say it."""
    if not (inspect.isclass(struct) and issubclass(struct, msgspec.Struct)):
        schema = msgspec.json.schema(struct)
        return {"$defs": schema.pop("$defs", {}), "root": schema}
    schema = msgspec.json.schema(schema_ready(struct))
    definitions = schema.pop("$defs", {})
    if struct is rpc.Reply:
        members, parts = msgspec.json.schema_components(
            result_types(), ref_template="#/$defs/{name}"
        )
        definitions.update(parts)
        result = definitions[struct.__name__]["properties"]["result"]
        definitions[struct.__name__]["properties"]["result"] = {"anyOf": list(members), **result}
    return {"$defs": definitions, "root": schema}


def all_messages(document: dict[str, Any]) -> dict[str, dict[str, Any]]:
    components = document["components"]["messages"]
    return {name: resolve(document, message) for name, message in components.items()}


def struct_messages(document: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The messages that are a Struct on the wire: all but the cleared payload."""
    return {n: m for n, m in all_messages(document).items() if m["name"] != CLEARED}


def operation_messages(document: dict[str, Any], action: str) -> dict[str, set[str]]:
    """Per channel, the references of the messages its ``action`` operations list."""
    listed: dict[str, set[str]] = {channel: set() for channel in document["channels"]}
    for operation in document["operations"].values():
        if operation["action"] == action:
            channel = operation["channel"]["$ref"].removeprefix("#/channels/")
            listed[channel].update(message["$ref"] for message in operation["messages"])
    return listed


def channel_message_refs(document: dict[str, Any], channel: str) -> set[str]:
    """The references of a channel's messages, as operations write them."""
    keys = document["channels"][channel]["messages"]
    return {f"#/channels/{channel}/messages/{key}" for key in keys}


def references(node: Any) -> set[str]:
    """Every ``$ref`` inside ``node``."""
    if isinstance(node, list):
        return set().union(*(references(item) for item in node))
    if not isinstance(node, dict):
        return set()
    found = {node["$ref"]} if isinstance(node.get("$ref"), str) else set()
    return found.union(*(references(value) for value in node.values()))


MESSAGE_NAMES: Final = sorted(
    name
    for name, message in load_document()["components"]["messages"].items()
    if message["name"] != CLEARED
)
CHANNEL_NAMES: Final = sorted(load_document()["channels"])


# --- the document ---------------------------------------------------------------------------
def test_document_is_asyncapi_3(doc: dict[str, Any]) -> None:
    assert str(doc["asyncapi"]).startswith("3."), f"asyncapi: {doc['asyncapi']!r}"
    unknown = {key for key in doc if not key.startswith("x-")} - TOP_LEVEL_FIELDS
    assert not unknown, f"not AsyncAPI 3 top-level fields: {sorted(unknown)}"
    assert doc["info"]["title"]
    assert doc["info"]["version"] == shared.__version__, "the document describes this release"
    assert doc["defaultContentType"] == "application/json"


def test_servers_are_mqtt_5_with_the_default_broker(doc: dict[str, Any]) -> None:
    servers = doc["servers"]
    protocols = {server["protocol"] for server in servers.values()}
    assert protocols == {"mqtt", "secure-mqtt"}, "one plain and one TLS server"
    for name, server in servers.items():
        assert server["protocolVersion"] == "5", f"server {name} is not MQTT 5"
    plain = next(server for server in servers.values() if server["protocol"] == "mqtt")
    assert plain["host"] == f"{DEFAULT_BROKER.host}:{DEFAULT_BROKER.port}"


def fill(template: str, root: TopicRoot) -> str:
    """``{root}`` and ``{env}`` of a binding's topic or payload, substituted."""
    return template.replace("{root}", root.value).replace("{env}", SAMPLE_ENV)


@pytest.mark.parametrize("root", ROOTS, ids=str)
def test_agent_will_is_the_contract_will(doc: dict[str, Any], root: TopicRoot) -> None:
    for name, server in doc["servers"].items():
        binding = resolve(doc, server["bindings"])["mqtt"]
        assert binding["clientId"] == "{env}", f"server {name}: client id = environment id"
        will = binding["lastWill"]
        assert set(will) == LAST_WILL_FIELDS
        assert (will["qos"], will["retain"]) == (1, True), f"server {name}: will QoS/retain"
        parsed = root.parse(fill(will["topic"], root))
        assert (parsed.kind, parsed.env) == (TopicKind.STATUS, SAMPLE_ENV)
        payload = fill(will["message"], root).encode()
        message = codec.STATUS.decode(payload)
        assert isinstance(message, messages.OfflineStatus)
        assert message.reason == "connection-lost"
        codec.check_env(message.env, SAMPLE_ENV)


@pytest.mark.parametrize("root", ROOTS, ids=str)
def test_controller_will_is_an_offline_controller_status(
    doc: dict[str, Any], root: TopicRoot
) -> None:
    for name, server in doc["servers"].items():
        connection = resolve(doc, server["x-controller-connection"])
        assert set(connection) <= MQTT_BINDING_FIELDS["server"], f"server {name}"
        will = connection["lastWill"]
        assert set(will) == LAST_WILL_FIELDS
        assert (will["qos"], will["retain"]) == (1, True), f"server {name}: will QoS/retain"
        assert root.parse(fill(will["topic"], root)).kind is TopicKind.CONTROLLER_STATUS
        status = codec.CONTROLLER_STATUS.decode(will["message"].encode())
        assert status.status == "offline"


def test_bindings_use_only_mqtt_binding_fields(doc: dict[str, Any]) -> None:
    owners = {
        "server": list(doc["servers"].values()),
        "channel": list(doc["channels"].values()),
        "operation": list(doc["operations"].values()),
        "message": list(all_messages(doc).values()),
    }
    bindings = {
        kind: [resolve(doc, owner["bindings"]) for owner in found if "bindings" in owner]
        for kind, found in owners.items()
    }
    assert bindings["server"], "the servers describe the agent's connection"
    assert bindings["operation"], "the operations carry QoS and retain"
    for kind, objects in bindings.items():
        for by_protocol in objects:
            for protocol, binding in by_protocol.items():
                assert protocol == "mqtt", f"{kind} binding for {protocol!r}"
                unknown = set(binding) - MQTT_BINDING_FIELDS[kind]
                assert not unknown, f"not MQTT {kind} binding fields: {sorted(unknown)}"
                assert binding.get("bindingVersion", "0.2.0") == "0.2.0"


def test_parameters_describe_root_and_env(doc: dict[str, Any]) -> None:
    parameters = doc["components"]["parameters"]
    for name, parameter in parameters.items():
        unknown = {key for key in parameter if not key.startswith("x-")} - PARAMETER_FIELDS
        assert not unknown, f"parameter {name}: not AsyncAPI 3 fields {sorted(unknown)}"
    root = parameters["root"]
    assert root["default"] == DEFAULT_ROOT
    for example in root["examples"]:
        TopicRoot(example)
    env = parameters["env"]
    assert env["x-pattern"] == ENV_ID_PATTERN.pattern
    assert ENV_ID_PATTERN.pattern in env["description"]
    assert all(is_env_id(example) for example in env["examples"])


# --- channels against the topic tree --------------------------------------------------------
@pytest.mark.parametrize("root", ROOTS, ids=str)
@pytest.mark.parametrize("channel", CHANNEL_NAMES)
def test_channel_address_is_a_topic_of_the_tree(
    doc: dict[str, Any], channel: str, root: TopicRoot
) -> None:
    spec = doc["channels"][channel]
    unknown = set(spec) - CHANNEL_FIELDS
    assert not unknown, f"channel {channel}: not AsyncAPI 3 fields {sorted(unknown)}"
    placeholders = set(PLACEHOLDER.findall(spec["address"]))
    assert placeholders == set(spec.get("parameters", {})), (
        f"channel {channel}: parameters must be exactly the address placeholders"
    )
    assert spec["address"].startswith("{root}/")
    parsed = root.parse(address_of(doc, channel, root))
    assert parsed.env == (SAMPLE_ENV if "env" in placeholders else None)


def test_every_topic_builder_has_a_channel(doc: dict[str, Any]) -> None:
    builders, _ = topic_methods()
    assert {"status", "events", "cmd", "controller_status", "view", "alerts"} <= set(builders)
    addresses = {address_of(doc, channel, TopicRoot()) for channel in doc["channels"]}
    missing = {name: topic for name, topic in builders.items() if topic not in addresses}
    assert not missing, f"topics the code builds with no channel in {ASYNCAPI.name}: {missing}"


def test_every_topic_kind_has_exactly_one_channel(doc: dict[str, Any]) -> None:
    kinds = [kind_of(doc, channel) for channel in doc["channels"]]
    assert sorted(kinds, key=str) == sorted(TopicKind, key=str)


def test_every_subscription_filter_matches_a_channel(doc: dict[str, Any]) -> None:
    _, filters = topic_methods()
    assert filters, "TopicRoot has subscription filters"
    addresses = [address_of(doc, channel, TopicRoot()) for channel in doc["channels"]]
    for name, topic_filter in filters.items():
        assert any(topic_matches(topic_filter, address) for address in addresses), (
            f"TopicRoot.{name}() = {topic_filter!r} matches no channel"
        )


# --- operations -----------------------------------------------------------------------------
def test_operations_reference_existing_channels_and_messages(doc: dict[str, Any]) -> None:
    for name, operation in doc["operations"].items():
        unknown = set(operation) - OPERATION_FIELDS
        assert not unknown, f"operation {name}: not AsyncAPI 3 fields {sorted(unknown)}"
        assert operation["action"] in ("send", "receive"), f"operation {name}"
        channel_ref = operation["channel"]["$ref"]
        assert channel_ref.startswith("#/channels/"), f"operation {name}: {channel_ref}"
        channel_name = channel_ref.removeprefix("#/channels/")
        assert channel_name in doc["channels"], f"operation {name}: no channel {channel_ref}"
        assert operation["messages"], f"operation {name} names no message"
        for message in operation["messages"]:
            ref = message["$ref"]
            # AsyncAPI 3: an operation's messages are a subset of its channel's messages.
            assert ref.startswith(f"{channel_ref}/messages/"), f"operation {name}: {ref}"
            resolved = resolve(doc, message)
            assert resolved["payload"], f"operation {name}: {ref} has no payload"
        roles = {tag["name"] for tag in operation["tags"]}
        assert roles <= {"agent", "controller", "dashboard", "operator"}, f"{name}: {roles}"


def test_every_channel_has_a_sender_and_a_receiver(doc: dict[str, Any]) -> None:
    actions: dict[str, set[str]] = {channel: set() for channel in doc["channels"]}
    for operation in doc["operations"].values():
        actions[operation["channel"]["$ref"].removeprefix("#/channels/")].add(operation["action"])
    lonely = {channel: sorted(seen) for channel, seen in actions.items() if len(seen) < 2}
    assert not lonely, f"channels without both a send and a receive operation: {lonely}"


def test_every_channel_message_is_sent_by_an_operation(doc: dict[str, Any]) -> None:
    sent = operation_messages(doc, "send")
    for channel in doc["channels"]:
        unsent = channel_message_refs(doc, channel) - sent[channel]
        assert not unsent, f"no operation sends {sorted(unsent)}"


def test_receivers_list_every_message_of_their_channel(doc: dict[str, Any]) -> None:
    # A subscriber gets whatever is published on the topic: it cannot choose messages.
    for name, operation in doc["operations"].items():
        if operation["action"] != "receive":
            continue
        channel = operation["channel"]["$ref"].removeprefix("#/channels/")
        listed = {message["$ref"] for message in operation["messages"]}
        missing = channel_message_refs(doc, channel) - listed
        assert not missing, f"operation {name} receives {channel} but lists not {sorted(missing)}"


def test_sends_keep_the_contract_qos_and_retain(doc: dict[str, Any]) -> None:
    for name, operation in doc["operations"].items():
        binding = operation["bindings"]["mqtt"]
        assert binding["qos"] == 1, f"operation {name}: every topic is QoS 1"
        if operation["action"] != "send":
            continue
        kind = kind_of(doc, operation["channel"]["$ref"].removeprefix("#/channels/"))
        assert binding["retain"] is RETAINED[kind], f"operation {name}: retain on {kind}"


def test_heartbeats_expire_after_about_three_intervals(doc: dict[str, Any]) -> None:
    online_sends = [
        operation
        for operation in doc["operations"].values()
        if operation["action"] == "send"
        and any(m["$ref"].endswith("/messages/online") for m in operation["messages"])
    ]
    assert len(online_sends) == 1
    expiry = online_sends[0]["bindings"]["mqtt"]["messageExpiryInterval"]
    assert expiry["type"] == "integer"
    assert expiry["description"].startswith("ceil(3 \N{MULTIPLICATION SIGN} interval)")
    # What the agent really sets, for the 10 s default interval and an odd one.
    assert message_expiry(10.0) == 30 == expiry["examples"][0]
    assert message_expiry(2.5) == math.ceil(3 * 2.5)


# --- messages against the Structs -----------------------------------------------------------
def test_every_wire_struct_has_a_message(doc: dict[str, Any]) -> None:
    names = {message["name"] for message in struct_messages(doc).values()}
    assert set(wire_structs()) == names


@pytest.mark.parametrize("channel", CHANNEL_NAMES)
def test_channel_messages_are_what_its_topic_carries(doc: dict[str, Any], channel: str) -> None:
    kind = kind_of(doc, channel)
    carried = TOPIC_MESSAGES[kind]
    expected = {struct.__name__ for struct in typing.get_args(carried) or (carried,)}
    if kind in CLEARED_KINDS:
        expected.add(CLEARED)
    names = {resolve(doc, ref)["name"] for ref in doc["channels"][channel]["messages"].values()}
    assert names == expected, f"channel {channel}: messages differ from the topic's decoder"


def test_every_part_struct_has_its_schema(doc: dict[str, Any]) -> None:
    parts = part_structs()
    assert {"Workflow", "Platform", "Check", "EnvInfo", "DeploymentInfo"} <= set(parts)
    schemas = doc["components"]["schemas"]
    for name, struct in parts.items():
        assert name in schemas, f"no schema {name} in {ASYNCAPI.name}"
        generated = generated_schema(struct)
        expected = normalized(generated, generated["root"])
        actual = normalized(doc, schemas[name])
        assert actual == expected, (
            f"schema {name} in {ASYNCAPI.name} differs from what msgspec makes of it; "
            f"expected:\n{json.dumps(expected, indent=2)}"
        )


def test_schemas_carry_no_discriminator(doc: dict[str, Any]) -> None:
    # OpenAPI's {propertyName, mapping} (what msgspec writes) is invalid AsyncAPI; AsyncAPI's
    # string form is for schemas tagged with their own names, which ours are not. The
    # members' fixed tags say it all (compared with msgspec's mapping by the tests above).
    found = discriminators(doc["components"]) + discriminators(doc["channels"], "#/channels")
    assert not found, f"discriminators in {ASYNCAPI.name}: {found}"


def test_every_schema_is_used_by_a_message(doc: dict[str, Any]) -> None:
    reached: set[str] = set()
    todo = [ref for message in all_messages(doc).values() for ref in references(message["payload"])]
    while todo:
        ref = todo.pop()
        if ref not in reached:
            reached.add(ref)
            todo.extend(references(resolve(doc, {"$ref": ref})))
    schemas = {f"#/components/schemas/{name}" for name in doc["components"]["schemas"]}
    unused = schemas - reached
    assert not unused, f"schemas no message payload refers to: {sorted(unused)}"


def test_each_request_names_its_result(doc: dict[str, Any]) -> None:
    requests = [
        resolve(doc, ref) for ref in doc["channels"]["controllerRequests"]["messages"].values()
    ]
    assert {message["name"] for message in requests} == {
        request.__name__ for request in rpc.RESULT_TYPES
    }
    for message in requests:
        result = rpc.RESULT_TYPES[wire_structs()[message["name"]]]
        generated = generated_schema(result)
        expected = normalized(generated, generated["root"])
        assert normalized(doc, message["x-result"]) == expected, (
            f"{message['name']}: x-result differs from rpc.RESULT_TYPES; expected:\n"
            f"{json.dumps(expected, indent=2)}"
        )


def test_requests_are_mqtt_5_request_response(doc: dict[str, Any]) -> None:
    requests = [
        resolve(doc, ref) for ref in doc["channels"]["controllerRequests"]["messages"].values()
    ]
    for message in requests:
        binding = resolve(doc, message["bindings"])["mqtt"]
        assert {"responseTopic", "correlationData"} <= set(binding), message["name"]
        for example in binding["responseTopic"]["examples"]:
            parsed = TopicRoot().parse(example)
            assert parsed.kind is TopicKind.REPLY, example
            assert is_env_id(parsed.client or ""), example
    reply = all_messages(doc)["Reply"]
    assert "correlationData" in resolve(doc, reply["bindings"])["mqtt"]
    sends = [
        operation
        for operation in doc["operations"].values()
        if operation["action"] == "send"
        and operation["channel"]["$ref"] == "#/channels/controllerRequests"
    ]
    assert len(sends) == 1
    expiry = sends[0]["bindings"]["mqtt"]["messageExpiryInterval"]
    assert expiry["examples"] == [rpc.REQUEST_EXPIRY], "the request expiry the code sets"
    assert sends[0]["reply"]["channel"]["$ref"] == "#/channels/controllerReplies"
    (answer,) = (
        operation
        for operation in doc["operations"].values()
        if operation["action"] == "send"
        and operation["channel"]["$ref"] == "#/channels/controllerReplies"
    )
    expiry = answer["bindings"]["mqtt"]["messageExpiryInterval"]
    assert expiry["examples"] == [rpc.REQUEST_EXPIRY], "the reply expiry the controller sets"


def test_commands_expire_after_the_controllers_command_ttl(doc: dict[str, Any]) -> None:
    sends = [
        operation
        for operation in doc["operations"].values()
        if operation["action"] == "send"
        and operation["channel"]["$ref"] == "#/channels/agentCommands"
    ]
    assert len(sends) == 1
    expiry = sends[0]["bindings"]["mqtt"]["messageExpiryInterval"]
    (ttl,) = (s.default for s in CONTROLLER_SETTINGS if s.name == "command_ttl")
    assert expiry["examples"] == [round(ttl)], "the controller's default --command-ttl"


@pytest.mark.parametrize("message_name", MESSAGE_NAMES)
def test_payload_schema_is_the_struct_schema(doc: dict[str, Any], message_name: str) -> None:
    message = all_messages(doc)[message_name]
    struct = wire_structs()[message["name"]]
    payload = resolve(doc, message["payload"])

    field_names = {field.encode_name for field in msgspec.structs.fields(struct)}
    info = msgspec.inspect.type_info(struct)
    assert isinstance(info, msgspec.inspect.StructType)
    if info.tag_field is not None:
        field_names.add(info.tag_field)
    assert set(payload["properties"]) == field_names, f"{message_name}: fields differ"

    generated = generated_schema(struct)
    expected = normalized(generated, generated["root"])
    actual = normalized(doc, message["payload"])
    assert actual == expected, (
        f"{message_name}: the schema in {ASYNCAPI.name} differs from what msgspec makes of "
        f"edgeplane.shared.messages.{struct.__name__}; expected:\n{json.dumps(expected, indent=2)}"
    )


def test_cleared_is_the_empty_payload(doc: dict[str, Any]) -> None:
    (cleared,) = (m for m in all_messages(doc).values() if m["name"] == CLEARED)
    assert normalized(doc, cleared["payload"]) == {"type": "string", "maxLength": 0}
    assert cleared["contentType"] != doc["defaultContentType"], "zero bytes are not JSON"
    assert [example["payload"] for example in cleared["examples"]] == [""]
    for kind in CLEARED_KINDS:
        assert RETAINED[kind], f"{kind}: only a retained message can be cleared"
        with pytest.raises(DecodeError) as caught:
            CODECS[kind].decode(b"")
        assert caught.value.reason == "empty", f"{kind}: decoders report a cleared payload"


@pytest.mark.parametrize("channel", CHANNEL_NAMES)
def test_channel_examples_decode_with_the_topic_codec(doc: dict[str, Any], channel: str) -> None:
    decoder = CODECS[kind_of(doc, channel)]
    for message_ref in doc["channels"][channel]["messages"].values():
        message = resolve(doc, message_ref)
        if message["name"] == CLEARED:
            continue  # no Struct: test_cleared_is_the_empty_payload
        struct = wire_structs()[message["name"]]
        assert message.get("examples"), f"{message['name']} has no example"
        for example in message["examples"]:
            payload = json.dumps(example["payload"]).encode()
            decoded = decoder.decode(payload)
            assert type(decoded) is struct, f"{example['name']} decodes as {decoded!r}"


def strings(node: Any) -> list[str]:
    """Every string value inside ``node``."""
    if isinstance(node, str):
        return [node]
    if isinstance(node, dict):
        return [text for value in node.values() for text in strings(value)]
    if isinstance(node, list):
        return [text for item in node for text in strings(item)]
    return []


def test_example_ids_look_like_real_ones(doc: dict[str, Any]) -> None:
    for prefix in ("c", "d"):
        assert REAL_ID.fullmatch(new_id(prefix)), f"the controller's ids: {new_id(prefix)!r}"
    examples = [
        example for message in all_messages(doc).values() for example in message["examples"]
    ]
    ids = {text for text in strings(examples) if LOOKS_LIKE_ID.fullmatch(text)}
    assert ids, "the examples show command and deployment ids"
    wrong = sorted(text for text in ids if not REAL_ID.fullmatch(text))
    assert not wrong, f"ids the controller never makes (it makes {new_id('d')!r}): {wrong}"


def test_typical_heartbeat_fits_160_bytes(doc: dict[str, Any]) -> None:
    message = all_messages(doc)["OnlineStatus"]
    heartbeat = next(e for e in message["examples"] if e["name"] == "heartbeat")
    decoded = codec.STATUS.decode(json.dumps(heartbeat["payload"]).encode())
    assert isinstance(decoded, messages.OnlineStatus)
    assert decoded.cpu is not None
    assert decoded.ver
    wire = codec.encode(decoded)
    assert len(wire) <= 160, f"{len(wire)} bytes: {wire!r}"


# --- docs/protocol.md -----------------------------------------------------------------------
def protocol_examples() -> list[str]:
    text = PROTOCOL.read_text(encoding="utf-8")
    return re.findall(r"```json\n(.*?)```", text, flags=re.DOTALL)


def test_protocol_md_examples_are_valid_messages() -> None:
    examples = protocol_examples()
    assert len(examples) >= len(wire_structs()), "protocol.md shows an example of each message"
    shown: set[str] = set()
    for example in examples:
        payload = example.strip().encode()
        decoded = []
        for decoder in CODECS.values():
            try:
                decoded.append(decoder.decode(payload))
            except DecodeError:
                continue
        assert decoded, f"protocol.md example decodes as no message:\n{example}"
        shown.update(type(message).__name__ for message in decoded)
    assert shown == set(wire_structs()), (
        f"protocol.md lacks examples of {set(wire_structs()) - shown}"
    )


def test_protocol_md_heartbeat_is_shown_as_it_travels() -> None:
    heartbeat = next(e.strip() for e in protocol_examples() if '"status":"online","env"' in e)
    decoded = codec.STATUS.decode(heartbeat.encode())
    as_sent = json.loads(heartbeat)
    assert as_sent == msgspec.to_builtins(decoded), "every field shown is a heartbeat field"
    assert list(as_sent) == list(msgspec.to_builtins(decoded)), "in the order the agent sends"
    stated = f"The message above is {len(heartbeat.encode())} bytes"
    assert stated in PROTOCOL.read_text(encoding="utf-8"), f"protocol.md: {stated!r}"
    assert len(heartbeat.encode()) <= 160


def protocol_topic_table() -> dict[str, list[str]]:
    """The rows of protocol.md's topic table: topic -> the other cells."""
    rows: dict[str, list[str]] = {}
    for line in PROTOCOL.read_text(encoding="utf-8").splitlines():
        match = re.match(r"\| `(R/[^`]+)` \|(.*)\|$", line)
        if match:
            rows[match.group(1)] = [cell.strip() for cell in match.group(2).split("|")]
    return rows


def test_protocol_md_topic_table_is_the_tree() -> None:
    rows = protocol_topic_table()
    kinds: dict[TopicKind, list[str]] = {}
    for template, cells in rows.items():
        topic = template.replace("R/", f"{DEFAULT_ROOT}/", 1)
        topic = PLACEHOLDER.sub(lambda match: SAMPLES[match.group(1)], topic)
        kinds[TopicRoot().parse(topic).kind] = cells
    assert set(kinds) == set(TopicKind), "protocol.md's table lists every topic once"
    for kind, cells in kinds.items():
        _publisher, _subscribers, retained, qos = cells[:4]
        assert retained == ("yes" if RETAINED[kind] else "no"), f"{kind}: retained column"
        assert qos == "1", f"{kind}: QoS column"


def test_operations_md_topics_are_in_the_tree(doc: dict[str, Any]) -> None:
    text = (DOCS / "operations.md").read_text(encoding="utf-8")
    topics = re.findall(r"-t '([^']+)'", text)
    assert topics, "operations.md shows mosquitto_sub / mosquitto_pub examples"
    addresses = [address_of(doc, channel, TopicRoot()) for channel in doc["channels"]]
    for topic in topics:
        if "+" in topic or "#" in topic:
            assert any(topic_matches(topic, address) for address in addresses), (
                f"operations.md subscribes to {topic!r}, which matches no channel"
            )
        else:
            TopicRoot().parse(topic)


def test_protocol_md_decode_error_reasons_are_the_codec_reasons() -> None:
    text = PROTOCOL.read_text(encoding="utf-8")
    section = text[text.index("## Bad input") : text.index("## Schema evolution")]
    documented = set(re.findall(r"^\| `([a-z-]+)` \|", section, flags=re.MULTILINE))

    def reason_of(action: Callable[[], object]) -> str:
        with pytest.raises(DecodeError) as caught:
            action()
        return caught.value.reason

    heartbeat = b'{"status":"online","env":"a","bdseq":1,"seq":0,"interval":10,"boot":"x"}'
    produced = {
        reason_of(lambda: codec.STATUS.decode(b" " * (codec.DEFAULT_MAX_PAYLOAD + 1))),
        reason_of(lambda: codec.VIEW.decode(b"")),
        reason_of(lambda: codec.STATUS.decode(b"\xff{")),
        reason_of(lambda: codec.STATUS.decode(heartbeat.replace(b'"seq":0', b'"seq":-1'))),
        reason_of(lambda: codec.check_env("a", "b")),
    }
    assert produced == {"too-large", "empty", "not-json", "schema", "env-mismatch"}
    assert documented == produced | {"bad-topic"}, "protocol.md's table of decode errors"
