"""Login required on every page; the API authenticates (tokens too) by itself."""

from django.contrib.auth.middleware import LoginRequiredMiddleware


class LoginRequired(LoginRequiredMiddleware):
    def process_view(self, request, view_func, view_args, view_kwargs):
        if request.path_info.startswith("/api/"):
            return None  # rest_framework answers 401/403 with its own authentication
        return super().process_view(request, view_func, view_args, view_kwargs)
