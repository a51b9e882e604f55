"""The Anthropic Messages API (POST /v1/messages) on the one chat serving path.

protocol: the wire schemas; translate: a Messages request as the internal chat request, and a finished result as a
message; stream: the engine's deltas as Messages stream events; errors: Anthropic's error shape.
"""

from engine_server.anthropic.errors import api_error_body, error_body, error_response
from engine_server.anthropic.protocol import CountTokensRequest, MessagesRequest
from engine_server.anthropic.respond import complete_message, message_events
from engine_server.anthropic.translate import to_chat

__all__ = [
    "CountTokensRequest",
    "MessagesRequest",
    "api_error_body",
    "complete_message",
    "error_body",
    "error_response",
    "message_events",
    "to_chat",
]
