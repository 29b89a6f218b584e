#!/usr/bin/env python
import os
import sys


def main():
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "welkin_dash.settings")
    if sys.argv[1:2] == ["evaluate"]:
        # A CI tool: runs without server secrets or a database (see settings.py).
        os.environ.setdefault("WELKIN_OFFLINE_COMMAND", "1")
    from django.core.exceptions import ImproperlyConfigured
    from django.core.management import execute_from_command_line

    try:
        execute_from_command_line(sys.argv)
    except ImproperlyConfigured as e:  # a bad setting: say which, without a traceback
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)  # bad input, as `evaluate` documents (1 means violations)


if __name__ == "__main__":
    main()
