"""Sign-ins, sign-outs and failed sign-ins land in the audit trail."""

from django.contrib.auth.signals import user_logged_in, user_logged_out, user_login_failed
from django.dispatch import receiver

from .services import signin_audit


@receiver(user_logged_in, dispatch_uid="accounts.audit_logged_in")
def audit_logged_in(sender, request, user, **kwargs):
    signin_audit(action="user.logged_in", username=user.get_username(), user_id=user.pk, request=request)


@receiver(user_logged_out, dispatch_uid="accounts.audit_logged_out")
def audit_logged_out(sender, request, user, **kwargs):
    # user is None when the session had already ended.
    if user is not None:
        signin_audit(action="user.logged_out", username=user.get_username(), user_id=user.pk, request=request)


@receiver(user_login_failed, dispatch_uid="accounts.audit_login_failed")
def audit_login_failed(sender, credentials, request=None, **kwargs):
    # credentials arrive with the password already masked by Django; only the username is kept.
    # axes' receiver runs first (its app is listed first) and flags a refused, locked-out client.
    signin_audit(action="user.login_failed", username=str(credentials.get("username") or ""), request=request,
                 locked_out=bool(getattr(request, "axes_locked_out", False)))
