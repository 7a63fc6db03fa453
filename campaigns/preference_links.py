"""Fresh preference-centre links, emailed to a customer whose link expired or broke.

Anyone can ask, so the answer never says whether the address belongs to a customer: the
page shows the same words either way, the lookup costs the same, and the email is sent by
a background task. Each address gets at most PREFERENCES_LINK_REQUESTS_PER_HOUR links an
hour, counted in the database for every web process, so the form cannot flood an inbox.
"""

from __future__ import annotations

import logging
from datetime import timedelta

from django.conf import settings
from django.core.mail import send_mail
from django.template.loader import render_to_string

from customers.limits import email_request_allow
from customers.models import Customer

from .links import preferences_url, sender_name

logger = logging.getLogger(__name__)

PURPOSE = "preferences-link"


def link_request(*, email: str) -> None:
    """Email a fresh link to ``email`` if a customer has that address and the limit allows.

    Returns nothing either way, so no caller can tell which it was.
    """
    from django_q.tasks import async_task

    address = email.strip().lower()  # customers' addresses are stored lower-case
    allowed = email_request_allow(
        purpose=PURPOSE, email=address,
        per_address=settings.PREFERENCES_LINK_REQUESTS_PER_HOUR, window=timedelta(hours=1),
    )
    if not allowed:
        logger.info("preference link request over the hourly limit for one address")
        return
    customer_id = Customer.objects.filter(email=address).values_list("pk", flat=True).first()
    if customer_id is not None:
        async_task("campaigns.tasks.preferences_link_send", customer_id, task_name="preferences-link",
                   group="preferences-link")


def link_send(*, customer_id: int) -> bool:
    """Email the customer a fresh preference-centre link through the default mailer.

    False when the customer is gone or has no address any more. Safe to run twice (the
    customer gets a second, equally valid link).
    """
    customer = Customer.objects.filter(pk=customer_id).exclude(email="").first()
    if customer is None:
        return False
    sender = sender_name()
    context = {
        "sender": sender,
        "url": preferences_url(customer.pk),
        "days": settings.PREFERENCES_LINK_MAX_AGE.days,
    }
    send_mail(
        f"Your message preferences at {sender}",
        render_to_string("tracking/preferences_link_email.txt", context),
        settings.DEFAULT_FROM_EMAIL,
        [customer.email],
    )
    return True
