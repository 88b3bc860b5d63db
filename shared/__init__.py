"""The wire contract shared by the controller and the edge agent."""

from edgeplane.shared.broker_url import DEFAULT_BROKER, BrokerUrl
from edgeplane.shared.errors import (
    DecodeError,
    EdgeplaneError,
    InvalidBrokerUrl,
    InvalidId,
    InvalidTopic,
    SettingsError,
)
from edgeplane.shared.ids import derive_env_id, is_env_id, validate_env_id
from edgeplane.shared.topics import DEFAULT_ROOT, ParsedTopic, TopicKind, TopicRoot

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_BROKER",
    "DEFAULT_ROOT",
    "BrokerUrl",
    "DecodeError",
    "EdgeplaneError",
    "InvalidBrokerUrl",
    "InvalidId",
    "InvalidTopic",
    "ParsedTopic",
    "SettingsError",
    "TopicKind",
    "TopicRoot",
    "__version__",
    "derive_env_id",
    "is_env_id",
    "validate_env_id",
]
