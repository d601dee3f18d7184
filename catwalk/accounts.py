"""Sign-up and the one-time claim that makes the first account an administrator."""

from __future__ import annotations

from django import forms
from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.forms import UserCreationForm
from django.core import signing
from django.db import transaction
from django.urls import reverse

CLAIM_SALT = "catwalk.claim-admin"
CLAIM_VALUE = "first-admin"


class SignupForm(UserCreationForm):
    email = forms.EmailField(required=True, help_text="For password resets.")

    class Meta(UserCreationForm.Meta):
        model = get_user_model()
        fields = ("username", "email")

    def clean_email(self) -> str:
        email = self.cleaned_data["email"].strip()
        domain = email.rsplit("@", 1)[-1].lower()
        allowed = settings.SIGNUP_ALLOWED_DOMAINS
        if allowed and domain not in allowed:
            raise forms.ValidationError(
                "Sign-up is limited to addresses at: %(domains)s.",
                params={"domains": ", ".join(allowed)},
            )
        if get_user_model().objects.filter(email__iexact=email).exists():
            raise forms.ValidationError("An account with this e-mail address already exists.")
        return email


def admin_exists() -> bool:
    return get_user_model().objects.filter(is_superuser=True).exists()


def admin_claim_path() -> str:
    token = signing.TimestampSigner(salt=CLAIM_SALT).sign(CLAIM_VALUE)
    return reverse("claim-admin", args=[token])


def claim_token_is_valid(token: str) -> bool:
    try:
        value = signing.TimestampSigner(salt=CLAIM_SALT).unsign(
            token, max_age=settings.ADMIN_CLAIM_MAX_AGE_SECONDS
        )
    except signing.BadSignature:
        return False
    return value == CLAIM_VALUE


def claim_admin(user) -> bool:
    """Make `user` the first administrator; False when an administrator already exists."""
    User = get_user_model()
    with transaction.atomic():
        # Lock the superusers (if any) so two concurrent claims cannot both succeed.
        if list(User.objects.select_for_update().filter(is_superuser=True).values("pk")[:1]):
            return False
        User.objects.filter(pk=user.pk).update(is_staff=True, is_superuser=True)
    user.is_staff = user.is_superuser = True
    return True
