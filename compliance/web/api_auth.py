"""The API's token authentication (REST_FRAMEWORK's DEFAULT_AUTHENTICATION_CLASSES): DRF's
tokens, refused once older than WELKIN_API_TOKEN_DAYS, and refused for a local account
(one without a provider identity, whatever its password) that may no longer sign in with
its password (WELKIN_LOCAL_LOGIN): access ends for a
token when it ends for its owner. A provider account's token ends with its role (the
idle sweep)."""

import datetime as dt

from django.conf import settings
from django.utils import timezone
from rest_framework.authentication import TokenAuthentication
from rest_framework.exceptions import AuthenticationFailed

from compliance.identity import signin


def expires_at(token) -> dt.datetime:
    return token.created + dt.timedelta(days=settings.WELKIN_API_TOKEN_DAYS)


class ExpiringToken(TokenAuthentication):
    def authenticate_credentials(self, key):
        user, token = super().authenticate_credentials(key)
        if expires_at(token) <= timezone.now():
            raise AuthenticationFailed(
                "the token expired (WELKIN_API_TOKEN_DAYS): ask an administrator for a new one"
            )
        if not signin.local_login_allowed(user) and not hasattr(user, "oidc"):
            raise AuthenticationFailed(
                "this account may not sign in with a password (WELKIN_LOCAL_LOGIN), nor "
                "use its token"
            )
        return user, token
