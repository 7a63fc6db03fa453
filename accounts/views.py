"""Sign-in pages that differ from Django's own: the lockout page and the limited password reset."""

from __future__ import annotations

from axes.handlers.proxy import AxesProxyHandler
from axes.helpers import get_client_ip_address, get_client_username, get_cool_off
from django.conf import settings
from django.contrib.auth import views as auth_views
from django.http import HttpResponseRedirect
from django.shortcuts import render

from . import services

LOCKED_OUT_TEMPLATE = "registration/locked_out.html"


def locked_out(request, original_response=None, credentials=None):
    """What a locked-out client sees, on the sign-in page and Django admin's (AXES_LOCKOUT_CALLABLE)."""
    cool_off = get_cool_off(request)
    minutes = max(1, round(cool_off.total_seconds() / 60)) if cool_off else None
    context = {"username": get_client_username(request, credentials) or "", "minutes": minutes}
    return render(request, LOCKED_OUT_TEMPLATE, context, status=429)


class PasswordResetView(auth_views.PasswordResetView):
    """Django's reset request, limited per address and per client, always answering the same."""

    html_email_template_name = None
    email_template_name = "registration/password_reset_email.txt"

    def form_valid(self, form):
        # Links go to the public address, not to whatever Host header the request carried.
        self.extra_email_context = {"site_url": settings.SITE_URL}
        allowed = services.password_reset_allow(
            email=form.cleaned_data["email"], ip_address=get_client_ip_address(self.request) or ""
        )
        if allowed:
            return super().form_valid(form)
        # The same page as a sent email, so nobody learns whether the address has an
        # account or has been asked for too often.
        return HttpResponseRedirect(self.get_success_url())

    def form_invalid(self, form):
        return self.render_to_response(self.get_context_data(form=form), status=422)


class PasswordResetConfirmView(auth_views.PasswordResetConfirmView):
    """Django's set-a-new-password page; the change is audited and ends any sign-in lockout."""

    def form_valid(self, form):
        response = super().form_valid(form)
        user = form.user
        # Whoever reads the account's mailbox may sign in with the new password at once.
        AxesProxyHandler.reset_attempts(username=user.get_username())
        services.signin_audit(action="user.password_reset", username=user.get_username(), user_id=user.pk,
                              request=self.request)
        return response

    def form_invalid(self, form):
        return self.render_to_response(self.get_context_data(form=form), status=422)
