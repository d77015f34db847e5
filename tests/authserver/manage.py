#!/usr/bin/env python3
"""Django entry point for the tower-bearer integration-test authorization server.

TEST-ONLY: this server exists to exercise tower-bearer against a real OAuth 2.0
implementation (django-oauth-toolkit). Never deploy it.
"""
import os
import sys

if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "authserver.settings")
    from django.core.management import execute_from_command_line

    execute_from_command_line(sys.argv)
