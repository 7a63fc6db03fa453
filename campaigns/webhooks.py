"""Provider webhooks: Twilio status callbacks and inbound messages."""

from django.http import HttpResponse


def _todo(request, *args, **kwargs):
    return HttpResponse(status=501)


twilio_status = twilio_inbound = _todo
