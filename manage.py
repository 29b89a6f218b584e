#!/usr/bin/env python
import os
import sys


def main():
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "welkin_dash.settings")
    if sys.argv[1:2] == ["evaluate"]:
        # A CI tool: runs without server secrets or a database (see settings.py).
        os.environ.setdefault("WELKIN_OFFLINE_COMMAND", "1")
    from django.core.management import execute_from_command_line

    execute_from_command_line(sys.argv)


if __name__ == "__main__":
    main()
