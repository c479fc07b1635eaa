"""pixelmill's Python client (docs/client.md) and `pixelmill submit`: needs only requests, tqdm and,
to verify webhooks, standardwebhooks.

    from client import Client, verify_webhook
"""

from client.api import Batch, Client, Event, Job, JobError, Links, Retry
from client.http import ApiError, ServerUnreachable
from client.webhooks import WebhookVerificationError, verify_webhook

__all__ = ["ApiError", "Batch", "Client", "Event", "Job", "JobError", "Links", "Retry", "ServerUnreachable",
           "WebhookVerificationError", "verify_webhook"]
