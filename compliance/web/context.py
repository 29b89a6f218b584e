"""Template context for every page: the user's role, for the navigation, and the state
columns every table shows (worst first, from compliance/vocabulary.py)."""

from compliance.identity import access
from compliance.vocabulary import STATES_BY_SEVERITY


def navigation(request):
    user = getattr(request, "user", None)
    if user is None or not user.is_authenticated:
        return {}
    scope = access.scope_for(user)
    role = {
        access.OFFICER: "Security officer",
        access.AUDITOR: "Auditor",
        access.LEAD: "Team lead",
    }.get(scope.role, "No role")
    return {"state_columns": STATES_BY_SEVERITY, "nav_scope": scope, "nav_role": role}
