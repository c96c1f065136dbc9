"""The webhook dispatcher: delivers matching events to subscribers over signed HTTP POSTs."""

from services.webhooks.config import WebhookSettings
from services.webhooks.service import Dispatcher

__all__ = ["Dispatcher", "WebhookSettings"]
