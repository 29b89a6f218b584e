"""Template context for every page: the user's role, for the navigation, and the state
columns every table shows (worst first, from compliance/vocabulary.py)."""

from compliance.identity import access
from compliance.vocabulary import ROLE, STATES_BY_SEVERITY


def navigation(request):
    user = getattr(request, "user", None)
    if user is None or not user.is_authenticated:
        return {}
    scope = access.scope_for(user)
    role = ROLE.label(scope.role) if scope.role in ROLE else "No role"
    return {"state_columns": STATES_BY_SEVERITY, "nav_scope": scope, "nav_role": role}
