"""Template context for every page: the user's role, for the navigation."""

from compliance import access


def navigation(request):
    user = getattr(request, "user", None)
    if user is None or not user.is_authenticated:
        return {}
    scope = access.scope_for(user)
    return {"nav_scope": scope, "nav_role": {access.OFFICER: "Security officer",
                                             access.AUDITOR: "Auditor",
                                             access.LEAD: "Team lead"}.get(scope.role, "No role")}
